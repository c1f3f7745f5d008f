"""The benchmarks' shared harness: timing, statistics, result rows, machine description."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MODULES = Path(__file__).resolve().parent / "modules"
# what --quick installs instead of numpy and pandas
LIGHT_REQUIREMENT = "six==1.17.0"
# the interpreter behind the running venv: both sides build their environments from it
BASE_PYTHON: str = getattr(sys, "_base_executable", sys.executable)


_TICK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not measure what it meant to (a command failed, a wait timed out)."""


# -- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        """Lower end of the spread: the minimum for few values, else the first quartile."""
        return min(self.values) if self.n <= 10 else _quantile(self.values, 0.25)

    @property
    def high(self) -> float:
        """Upper end of the spread: the maximum for few values, else the third quartile."""
        return max(self.values) if self.n <= 10 else _quantile(self.values, 0.75)

    @property
    def p95(self) -> float:
        return _quantile(self.values, 0.95)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lower = int(pos)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (pos - lower)


def paired_ratios(top: Sequence[float], bottom: Sequence[float]) -> Stats:
    """The ratio of each pair of measurements taken side by side."""
    return Stats(tuple(a / b for a, b in zip(top, bottom, strict=True) if b > 0))


def alternate(
    reps: int,
    sides: Sequence[Callable[[], float]],
    log: Callable[[str], None] | None = None,
    unit: str = "s",
    block: int = 1,
) -> list[list[float]]:
    """Run the sides A/B/A/B… until each has ``reps`` measurements; each returns its own.

    With ``block`` > 1, each side runs ``block`` measured times in a row, after one unmeasured
    run: that first run pays for what the previous side left behind (the kernel tearing down
    the last task's sandbox and cgroups, a server's caches gone cold), which task-by-task
    alternation charges to whichever side happens to come next.
    """
    results: list[list[float]] = [[] for _ in sides]
    rounds = -(-reps // block)
    for round_ in range(rounds):
        for index, side in enumerate(sides):
            if block > 1:
                side()
            for _ in range(min(block, reps - round_ * block)):
                results[index].append(side())
        if log:
            figures = ", ".join(fmt_value(r[-1], unit) for r in results)
            log(f"  round {round_ + 1}/{rounds}: {figures}")
    return results


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work`` took on the monotonic clock."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


# -- formatting -------------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    """A figure in a readable unit: seconds become ms below 1 s, bytes become MB/GB."""
    if unit == "s":
        if value < 1.0:
            return f"{value * 1000:.3g} ms" if value < 0.1 else f"{value * 1000:.0f} ms"
        return f"{value:.3g} s"
    if unit == "B":
        if value >= 1024**3:
            return f"{value / 1024**3:.2f} GB"
        return f"{value / 1024**2:.1f} MB"
    if unit == "x":
        return f"{value:.3g}×"
    return f"{value:.3g} {unit}".rstrip()


def fmt_delta(seconds: float) -> str:
    """A signed difference of times, e.g. ``+8.1 ms``."""
    sign = "+" if seconds >= 0 else "−"
    return sign + fmt_value(abs(seconds), "s")


def fmt_stats(stats: Stats, unit: str) -> str:
    """Median with its spread, e.g. ``1.2 s (1.1–1.4, n=5)``."""
    if stats.n == 0:
        return "—"
    median = fmt_value(stats.median, unit)
    if stats.n == 1:
        return median
    low, high = fmt_value(stats.low, unit), fmt_value(stats.high, unit)
    return f"{median} ({low}–{high}, n={stats.n})"


# -- result rows ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    measurement: str
    orchestra: str = "—"
    classic: str = "—"
    ratio: str = "—"
    target: str = ""
    met: bool | None = None  # None: no target, or not measured

    @property
    def verdict(self) -> str:
        if self.met is None:
            return ""
        return "met" if self.met else "MISSED"


@dataclass
class Report:
    """Everything one run produced: rows, notes, timings."""

    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def note(self, bench: str, text: str) -> None:
        """Add a remark printed under the table for ``bench``."""
        self.notes.setdefault(bench, []).append(text)


def render_table(rows: Iterable[Row]) -> str:
    """The rows as a Markdown table (readable as plain text too)."""
    header = ["#", "measurement", "Orchestra", "classic", "ratio / difference", "target", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.bench, row.measurement, row.orchestra, row.classic, row.ratio]
        cells += [row.target, row.verdict]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# -- processes --------------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (steal excluded)."""
    # user nice system idle iowait irq softirq steal: busy is all but idle, iowait and steal
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4] - values[7]) / _TICK


def process_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used, all its threads (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and all its descendants, those ended and reaped too."""
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile: its parent's children's time now holds it
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        # utime + stime + cutime + cstime: what it and its reaped children spent
        spent[child] = sum(int(v) for v in fields[11:15]) / _TICK
    return sum(cpu for child, cpu in spent.items() if _descends(child, pid, parents))


def _descends(child: int, ancestor: int, parents: dict[int, int]) -> bool:
    while child > 1:
        if child == ancestor:
            return True
        child = parents.get(child, 0)
    return child == ancestor


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 900.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell); BenchError with its output tail on failure."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} timed out after {timeout:g} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-1500:]
        raise BenchError(f"{' '.join(argv[:4])} … exited {done.returncode}: {tail}")
    return done


def user_env(**extra: str) -> dict[str, str]:
    """The caller's environment as a user has it, without ORCHESTRA_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    env.update(extra)
    return env


# -- disk -------------------------------------------------------------------------------------


def disk_usage(roots: Iterable[Path], *, exclude: Iterable[Path] = ()) -> int:
    """Bytes allocated under ``roots`` like ``du``: each inode counted once (hard links)."""
    seen: set[tuple[int, int]] = set()
    skipped = {p.resolve() for p in exclude}
    total = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = [d for d in dirs if (here / d).resolve() not in skipped]
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                info = os.lstat(name)
                key = (info.st_dev, info.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += info.st_blocks * 512
    return total


# -- modules ----------------------------------------------------------------------------------


def prepare_module(kind: str, dest: Path, *, suffix: str = "", light: bool = False) -> Path:
    """Copy the benchmark module ``kind`` to ``dest``, with ``suffix`` appended to its name.

    ``light`` swaps numpy and pandas for one small package, so that a smoke run stays short.
    """
    shutil.copytree(MODULES / kind, dest)
    meta_path = dest / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] += suffix
    requirements = dest / "requirements.txt"
    if light and requirements.exists():
        requirements.write_text(LIGHT_REQUIREMENT + "\n")
        if "module" in (meta.get("defaults") or {}):
            meta["defaults"]["module"] = LIGHT_REQUIREMENT.split("==")[0]
    meta_path.write_text(json.dumps(meta, indent=2))
    return dest


def module_argv(module_dir: Path) -> list[str]:
    """The ``--name value`` pairs Orchestra passes when a run request gives no values."""
    meta = json.loads((module_dir / "metadata.json").read_text())
    defaults = meta.get("defaults") or {}
    argv: list[str] = []
    for item in [*meta.get("args", []), *meta.get("hyperparameters", [])]:
        name = item if isinstance(item, str) else item[0]
        if name in defaults:
            argv += [f"--{name}", str(defaults[name])]
    return argv


def executable_of(module_dir: Path) -> str:
    """The ``install.executable`` a module declares."""
    return str(json.loads((module_dir / "metadata.json").read_text())["install"]["executable"])


# -- machine ----------------------------------------------------------------------------------


def machine_description(uv: str) -> dict[str, str]:
    """CPU, cores, memory, Python, uv and pip versions, date and commit."""
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_version()} ({BASE_PYTHON})",
        "uv": _version([uv, "--version"]),
        "pip": _version([BASE_PYTHON, "-m", "pip", "--version"]).split(" from ")[0],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "(unset)"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unavailable"
    return done.stdout.strip() or "unavailable"
