"""11. Downloading several outputs as one zip: random bytes and CSV text, against `zip -1`."""

from __future__ import annotations

import http.client
import logging
import shutil
import subprocess
from pathlib import Path

from context import Context
from harness import Row, Stats, alternate, fmt_stats, fmt_value, paired_ratios, timed
from live import Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "zip"
NUMBER = "11"
TARGET_STORED = 200e6  # bytes/s of files that do not compress, at least
READ = 1024 * 1024  # bytes the client reads at a time
METHOD = (
    "A task of benchmarks/modules/outputs writes three files of 300 MB (random bytes, then "
    "CSV text: time stamps and numbers); GET /task/<id>/output on a real server streams them "
    "as one zip, read to the end by curl on loopback and thrown away. Rate: the files' "
    "bytes over the download's time. For the text, `zip -1` (Info-ZIP, the fastest deflate "
    "level) of the same three files into the scratch folder, alternated with the download. "
    "The files are read once before timing, so both sides read them from the page cache."
)


def run_bench(ctx: Context) -> list[Row]:
    """Two tasks' outputs downloaded as zips; the text also zipped by `zip -1`."""
    megabytes = ctx.count(300, 5)
    reps = ctx.reps(3, 1)
    scratch = ctx.folder("zip")
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    with Server(env, scratch / "server.log") as server:
        module_id = server.register(ctx.prepare("outputs", scratch / "module"))
        random_task = _outputs(server, module_id, "random", megabytes)
        text_task = _outputs(server, module_id, "csv", megabytes)
        files = {task: sorted((server.home / "tasks" / str(task) / "output").iterdir())
                 for task in (random_task, text_task)}  # fmt: skip
        size = {task: sum(p.stat().st_size for p in paths) for task, paths in files.items()}
        for paths in files.values():
            _read(paths)  # into the page cache: the disk is the same for both sides
        stored = [_download(server.port, random_task) for _ in range(reps)]
        rows = [_rate_row("3 × random outputs as one zip", size[random_task], Stats(tuple(stored)))]
        rows.append(_text_row(ctx, server.port, text_task, files[text_task], reps, scratch))
    return rows


def _outputs(server: Server, module_id: int, kind: str, megabytes: int) -> int:
    task_id = server.submit(module_id, {"kind": kind, "megabytes": str(megabytes)})
    server.wait(task_id, timeout=600)
    return task_id


def _read(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as handle:
            while handle.read(READ):
                pass


def _download(port: int, task_id: int) -> float:
    """Seconds to receive the whole zip of a task's outputs (with curl where there is one)."""
    url = f"http://127.0.0.1:{port}/task/{task_id}/output"
    curl = shutil.which("curl")
    if curl is not None:  # Python's own client reads a chunked answer at ~300 MB/s here
        argv = [curl, "--silent", "--fail", "--output", "/dev/null", url]
        return timed(lambda: subprocess.run(argv, check=True))

    def fetch() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            conn.request("GET", f"/task/{task_id}/output")
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET /task/{task_id}/output answered {response.status}")
            buffer = memoryview(bytearray(READ))
            while response.readinto(buffer):
                pass
        finally:
            conn.close()

    return timed(fetch)


def _rate_row(what: str, size: int, seconds: Stats) -> Row:
    rate = Stats(tuple(size / s for s in seconds.values))
    return Row(
        NUMBER,
        f"{what}: {fmt_value(size, 'B')} in {fmt_stats(seconds, 's')}",
        f"{rate.median / 1e6:.0f} MB/s",
        target=f"≥ {TARGET_STORED / 1e6:.0f} MB/s",
        met=rate.median >= TARGET_STORED,
    )


def _text_row(
    ctx: Context, port: int, task_id: int, paths: list[Path], reps: int, scratch: Path
) -> Row:
    size = sum(p.stat().st_size for p in paths)
    zip_program = shutil.which("zip")
    if zip_program is None:
        ctx.report.note(NAME, "`zip` is not installed here: the text row has no comparison.")
        seconds = Stats(tuple(_download(port, task_id) for _ in range(reps)))
        return Row(NUMBER, "3 × CSV outputs as one zip", fmt_stats(seconds, "s"))
    target = scratch / "text.zip"

    def zip_one() -> float:
        target.unlink(missing_ok=True)
        argv = [zip_program, "-q", "-j", "-1", str(target), *map(str, paths)]
        return timed(lambda: subprocess.run(argv, check=True))

    ours, theirs = alternate(reps, [lambda: _download(port, task_id), zip_one], ctx.log)
    ctx.report.note(NAME, f"`zip -1` made {fmt_value(target.stat().st_size, 'B')} of the text.")
    ratio = paired_ratios(ours, theirs)
    return Row(
        NUMBER,
        f"3 × CSV outputs as one zip ({fmt_value(size, 'B')}), MB/s",
        f"{size / Stats(tuple(ours)).median / 1e6:.0f} MB/s",
        f"`zip -1`: {size / Stats(tuple(theirs)).median / 1e6:.0f} MB/s",
        f"{fmt_stats(ratio, 'x')} the time",
        target="≤ 1× `zip -1`'s time",
        met=ratio.median <= 1.0,
    )
