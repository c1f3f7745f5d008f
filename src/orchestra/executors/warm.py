"""Warm starts: spare interpreters, each started ahead for one task.

A spare is what a cold task of a module would be, started before the task exists: a
supervisor (forked by the launcher, ``warmstart.py``) that has already made the task's sandbox
and limits and run the module's interpreter there, which has imported what earlier tasks of
the module imported (``spare.py``) and waits. A task that finds a spare of its kind is handed
to it and runs at once; the pool then starts another in the background. A spare serves one
task and ends with it, so a warm task is as isolated as a cold one: its own sandbox,
namespaces, ``/tmp``, cgroups and process tree, and a module state that no earlier task
touched. What it saves a task is the interpreter's start and its imports; what it costs is
that work done ahead, once per task, and the spares' memory.

The kind (:class:`Kind`) is everything a spare is made for: the generation, the entry point,
the network, the model version's folder and the limits. A kind's first task runs cold
through a small wrapper that writes, at its end, the names it imported (the ``learn`` file),
which its spares import. The pool keeps one spare per kind in use, one more
each time a task found none (up to ``max_running``), all within ``warm_memory_mb`` (the
least recently used kinds give theirs up first; a kind whose one spare is larger than the
budget starts cold), and drops a kind's spares after ``warm_idle_seconds`` unused, when its
generation is gone (removed, or replaced and dropped) or another generation of the module is
launched (an update), and after two spares of it died before their task came.
See docs/architecture.md ("Warm starts").
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
SPARE_PROGRAM = Path(__file__).resolve().parent / "spare.py"
# where a spare's program and output folder are in its sandbox: not below /tmp, whose
# listing a task may look at, nor beside the output folder, which its task's path leads to
SPARE_PROGRAM_INSIDE = "/orchestra-warm/spare.py"
SPARE_OUTPUT = "/orchestra-spare/output"
_SWEEP_EVERY = 1.0  # seconds between two looks at idle, gone, dead and oversized spares
_PENDING_EVERY = 0.05  # the same while a spare is starting: it is handed out once measured
_FAILURES = 2  # spares of a kind that died before their task: its tasks start cold
_MB = 1024 * 1024
# run as the cold wrapper: ``python -c LEARN executable output args...``; what the module
# imported is written on descriptor 3 (opened by the supervisor) when it exits normally
# (every module, in the order they were loaded: submodules such as sklearn.ensemble are
# imported by name, not only their top package; the module's own package is left out)
LEARN = (
    "import atexit, os, runpy, sys\n"
    "_own = sys.argv[1].partition('.')[0]\n"
    "def _learnt():\n"
    "    names = [n for n in list(sys.modules) if n.partition('.')[0] != _own\n"
    "             and n not in sys.builtin_module_names and n != '__main__'\n"
    "             and all(p.isidentifier() for p in n.split('.'))]\n"
    "    try:\n"
    "        os.write(3, '\\n'.join(names).encode())\n"
    "    except OSError:\n"
    "        pass\n"
    "del sys.argv[0]\n"
    "sys.path[0] = os.getcwd()\n"
    "atexit.register(_learnt)\n"
    "runpy._run_module_as_main(sys.argv[0])\n"
)

Launcher = Callable[[dict[str, Any]], dict[str, Any]]  # one request to the launcher, its answer
# makes a spare's spec (argv, env, cwd, limits) for its folder and the names it imports
Recipe = Callable[[Path, list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """What a spare is made for: tasks of one entry point of one generation, run alike."""

    module_id: int
    generation: str
    executable: str
    network: bool
    model: str  # the model version's folder, or ""
    limits: str  # the module's own limits, as JSON


@dataclass
class _Spare:
    pid: int
    folder: Path
    size: int = 0  # bytes, measured once it was ready: from then on it is handed out

    def ready(self) -> bool:
        return (self.folder / "ready").exists()

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()

    def memory(self) -> int:
        """Bytes resident in its supervisor and all below it (sandbox, interpreter)."""
        return sum(_rss(pid) for pid in [self.pid, *_descendants(self.pid)])


@dataclass
class _Demand:
    """A kind's spares, how to make more, and how much it is asked for."""

    recipe: Recipe
    spares: list[_Spare] = field(default_factory=list)
    wanted: int = 1
    last_used: float = field(default_factory=time.monotonic)
    failures: int = 0
    made: int = 0  # spares started (none while its first task learns what it imports)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        below = _children(todo.pop())
        found += below
        todo += below
    return found


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(p) for p in handle.read().split()]
    except (OSError, ValueError):
        return []


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_budget(settings: Settings) -> int:
    """Bytes the spare interpreters may hold: the setting, or a quarter of the machine's."""
    if settings.warm_memory_mb:
        return settings.warm_memory_mb * _MB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class WarmPool:
    """The spare interpreters of this process's tasks, by kind, and what each kind imports."""

    def __init__(self, settings: Settings, launcher: Launcher) -> None:
        self._settings = settings
        self._launcher = launcher
        self._lock = threading.Lock()
        self._kinds: dict[Kind, _Demand] = {}
        self._cold: set[Kind] = set()  # too large for the budget, or its spares die
        self._taught: set[Kind] = set()  # those whose learning this process has looked at
        self._learnt = settings.home / "warm"
        self._folders = settings.home / "spares"
        self._made = 0
        _sweep_spare_folders(self._folders)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="warm-spares", daemon=True)
        self._thread.start()

    def learning(self, kind: Kind) -> Path | None:
        """Where the first task of ``kind`` writes what it imports (None for the others).

        A task that does not end normally (killed, or by a limit) tells nothing: the spares of
        its kind then import nothing ahead, but still save the interpreter's start.
        """
        with self._lock:  # asked once per kind and process: no look at the disk after that
            if kind in self._taught:
                return None
            self._taught.add(kind)
        learnt = self.learnt_file(kind)
        if learnt.is_file():
            return None
        learnt.parent.mkdir(parents=True, exist_ok=True)
        for stale in _learning(learnt):  # a learning task that died with its supervisor
            if not Path(f"/proc/{stale.name.split('.')[-2]}").exists():
                stale.unlink(missing_ok=True)
        return learnt

    def learnt_file(self, kind: Kind) -> Path:
        """What tasks of ``kind`` import, once one has run."""
        return self._learnt / kind.generation / f"{kind.executable}.txt"

    def take(self, kind: Kind, recipe: Recipe) -> int | None:
        """A spare for a task of ``kind`` (its supervisor's pid), or None: it starts cold."""
        self._retire_others(kind)
        with self._lock:
            if kind in self._cold:
                return None
            demand = self._kinds.setdefault(kind, _Demand(recipe))
            demand.recipe, demand.last_used = recipe, time.monotonic()
            spare = next((s for s in demand.spares if s.size), None)
            if spare is not None:
                demand.spares.remove(spare)
            elif demand.made:  # asked for more than there were ready: one more from now on
                demand.wanted = min(demand.wanted + 1, max(1, self._settings.max_running))
        self._wake.set()
        return None if spare is None else spare.pid

    def _retire_others(self, kind: Kind) -> None:
        """Drop the spares of the module's other generations (it was updated)."""
        self._forget(lambda k: k.module_id == kind.module_id and k.generation != kind.generation)

    def _forget(self, condition: Callable[[Kind], bool]) -> None:
        with self._lock:
            gone = [k for k in self._kinds if condition(k)]
            spares = [s for k in gone for s in self._kinds.pop(k).spares]
        for spare in spares:
            self._drop(spare)

    def _drop(self, spare: _Spare) -> None:
        try:
            self._launcher({"drop": spare.pid})
        except OSError as exc:  # the launcher is gone: so are its spares
            _LOGGER.debug("dropping spare %s: %s", spare.pid, exc)

    def _loop(self) -> None:
        swept = 0.0
        while not self._stopping.is_set():
            with self._lock:
                pending = any(not s.size for d in self._kinds.values() for s in d.spares)
            self._wake.wait(_PENDING_EVERY if pending else _SWEEP_EVERY)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if time.monotonic() - swept >= _SWEEP_EVERY:  # not at every look at a spare
                    self.sweep()
                    swept = time.monotonic()
                self._admit()
                self._fill()
            except Exception:  # the next round tries again
                _LOGGER.exception("keeping spare interpreters failed")

    def sweep(self) -> None:
        """Drop idle kinds and those whose generation is gone; count spares that died."""
        idle, now = self._settings.warm_idle_seconds, time.monotonic()
        installs = self._settings.installs_dir
        unused = lambda k: now - self._kinds[k].last_used > idle  # noqa: E731
        self._forget(lambda k: unused(k) or not (installs / k.generation).is_dir())
        with self._lock:
            for kind, demand in self._kinds.items():
                for spare in [s for s in demand.spares if not s.alive()]:
                    demand.spares.remove(spare)
                    if _failed(spare):
                        demand.failures += 1
                if demand.failures >= _FAILURES and kind not in self._cold:
                    _LOGGER.warning("spares of %s keep dying: its tasks start cold", kind)
                    self._cold.add(kind)
        # what a removed generation imported is of no more use
        for folder in self._learnt.glob("*") if self._learnt.is_dir() else ():
            if not (installs / folder.name).exists():
                shutil.rmtree(folder, ignore_errors=True)

    def _admit(self) -> None:
        """Measure the spares that became ready, and keep them within the budget."""
        budget = memory_budget(self._settings)
        with self._lock:
            fresh = [(k, s) for k, d in self._kinds.items() for s in d.spares
                     if not s.size and s.ready()]  # fmt: skip
        for kind, spare in fresh:
            size = max(1, spare.memory())  # given to the spare, which hands it out, if kept
            if size > budget:  # alone larger than the budget: its kind starts cold
                _LOGGER.warning("a spare of %s is larger than ORCHESTRA_WARM_MEMORY_MB", kind)
                with self._lock:
                    self._cold.add(kind)
                self._forget(lambda k, cold=kind: k == cold)  # type: ignore[misc]
            elif not self._room_for(kind, size):
                self._forget_spare(kind, spare)
            else:
                spare.size = size

    def _forget_spare(self, kind: Kind, spare: _Spare) -> None:
        with self._lock:
            demand = self._kinds.get(kind)
            if demand is not None and spare in demand.spares:
                demand.spares.remove(spare)
        self._drop(spare)

    def _fill(self) -> None:
        """Start the spares wanted (measured and kept within the budget once ready)."""
        with self._lock:
            short = [(k, d) for k, d in self._kinds.items()
                     if k not in self._cold and len(d.spares) < d.wanted]  # fmt: skip
        for kind, demand in short:
            learnt = self.learnt_file(kind)
            if not learnt.is_file() and _learning(learnt):
                continue  # its first task is still running: a spare now would slow it down
            names = learnt.read_text(encoding="utf-8").split() if learnt.is_file() else []
            spare = self._start(kind, demand, names)
            if spare is not None:
                with self._lock:
                    demand.spares.append(spare)
                    demand.made += 1

    def _start(self, kind: Kind, demand: _Demand, names: list[str]) -> _Spare | None:
        self._made += 1
        folder = self._folders / f"{os.getpid()}-{self._made}"
        try:
            (folder / "output").mkdir(parents=True)
            spec = demand.recipe(folder, names)
            answer = self._launcher({"prepare": {"spare_dir": str(folder), "spec": spec}})
            return _Spare(int(answer["pid"]), folder)
        except (OSError, KeyError, ValueError) as exc:
            _LOGGER.warning("no spare interpreter for %s: %s", kind, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def _room_for(self, kind: Kind, size: int) -> bool:
        """Whether one more spare of ``kind`` (``size`` bytes) fits the budget, once the least
        recently used kinds' spares (never those of ``kind``) are dropped to make room."""
        budget = memory_budget(self._settings)
        with self._lock:
            order = sorted(self._kinds.items(), key=lambda item: item[1].last_used)
        total = size + sum(s.size for _, d in order for s in d.spares)
        for other, demand in order:
            if total <= budget:
                return True
            if other == kind:
                continue
            for spare in [s for s in demand.spares if s.size]:
                self._forget_spare(other, spare)
                total -= spare.size
        return total <= budget

    def spares(self) -> dict[str, int]:
        """How many spares are ready (measured: handed out) and how many are starting."""
        with self._lock:
            every = [s for d in self._kinds.values() for s in d.spares]
        ready = sum(1 for s in every if s.size)
        return {"ready": ready, "starting": len(every) - ready}

    def close(self) -> None:
        """Stop keeping spares (those there are end with the launcher)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)


def _learning(learnt: Path) -> list[Path]:
    """The files a kind's learning tasks are writing (the supervisor's ``learn``: PATH.PID.tmp)."""
    return list(learnt.parent.glob(f"{glob.escape(learnt.name)}.*.tmp"))


def _failed(spare: _Spare) -> bool:
    """Whether a spare that is gone died before its task came (its supervisor said so)."""
    marker = spare.folder.with_name(spare.folder.name + ".failed")
    try:
        marker.unlink()
    except OSError:
        return False
    return True


def _sweep_spare_folders(folders: Path) -> None:
    """Remove what spares of processes that are gone (killed: nothing ran) left behind."""
    for folder in folders.glob("*-*") if folders.is_dir() else ():
        pid = folder.name.partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink()
