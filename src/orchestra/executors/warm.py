"""Warm interpreters (SPEC section 12): one fork server per module generation and sandbox profile.

The pool lives beside the local executor (on a server as on a worker). A module's first task
runs cold through a small wrapper that writes, at its end, the names it imported (the
``learn`` file); once a generation has such a file, its fork server (``forkserver.py``) is
started in the background, in the module's sandbox, and later tasks of that generation go
through it (``warm`` in the launch request; the supervisor falls back to a cold start when
the fork server cannot take one). A fork server that refuses (a thread or a process started
by the imports) keeps its generation cold. Fork servers are stopped after
``warm_idle_seconds`` unused, when their generation is gone (removed, or replaced and
dropped) or another generation of the module is launched (an update), and the least recently
used first when their memory passes ``warm_memory_mb``. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestra.executors import proctree, sandbox
from orchestra.process import clean_env

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import TaskSpec
    from orchestra.storage.files import InstallFolder

_LOGGER = logging.getLogger(__name__)
FORKSERVER = Path(__file__).resolve().parent / "forkserver.py"
_READY_TIMEOUT = 120.0  # seconds a fork server may take to import a module's stack
_SWEEP_EVERY = 1.0  # seconds between two looks at idle, gone and oversized fork servers
_MB = 1024 * 1024
_SOCKETS_PREFIX = "orchestra-warm-"
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


@dataclass
class _Server:
    """One running fork server."""

    module_id: int
    generation: str
    process: subprocess.Popen[bytes]
    socket: str
    last_used: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def memory(self) -> int:
        """Bytes resident in the fork server and its two bubblewrap processes (not its tasks)."""
        chain = [self.process.pid]
        for _ in range(2):  # bubblewrap, its pid namespace's first process, the fork server
            below = _children(chain[-1])
            if not below:
                break
            chain.append(below[0])
        return sum(_rss(pid) for pid in chain)

    def stop(self) -> None:
        """Retire it: it takes no more tasks and ends once its running tasks have ended.

        Never killed: its sandbox's first process is the ancestor of every task it started,
        which must outlive this server like any task (they are adopted after a restart).
        """
        if self.process.stdin is not None:
            self.process.stdin.close()  # the end of its standard input tells it to retire


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return sorted(int(p) for p in handle.read().split())
    except (OSError, ValueError):
        return []


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _sweep_socket_folders() -> None:
    """Remove the socket folders of pools whose process is gone (killed: no close ran)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SOCKETS_PREFIX}*-*"):
        pid = folder.name[len(_SOCKETS_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def memory_budget(settings: Settings) -> int:
    """Bytes the warm interpreters may hold: the setting, or a quarter of the machine's."""
    if settings.warm_memory_mb:
        return settings.warm_memory_mb * _MB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class WarmPool:
    """The fork servers of this process's tasks, and what each generation imports."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._servers: dict[tuple[str, bool], _Server] = {}
        self._starting: set[tuple[str, bool]] = set()
        self._cold: set[tuple[str, bool]] = set()  # refused: its tasks start cold
        self._taught: set[str] = set()  # generations whose first task ran to learn
        _sweep_socket_folders()
        # short socket paths (108 bytes at most), named for this process
        self._sockets = Path(tempfile.mkdtemp(prefix=f"{_SOCKETS_PREFIX}{os.getpid()}-"))
        self._learnt = settings.home / "warm"
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="warm-sweep", daemon=True)
        self._sweeper.start()

    def launch(
        self, task: TaskSpec, install: InstallFolder, output: Path, state: sandbox.SandboxState
    ) -> dict[str, Any]:
        """What to add to a task's launch request: ``warm``, ``learn``, or nothing (cold)."""
        if not task.warm or not state.active:
            return {}
        key = (task.generation, task.network)
        self._retire_others(task.module_id, task.generation)
        with self._lock:
            server = self._servers.get(key)
            if server is not None and server.alive():
                server.last_used = time.monotonic()
                argv = [str(output), *task.args]
                warm = {"socket": server.socket, "output": str(output),
                        "executable": task.executable, "argv": argv}  # fmt: skip
                return {"warm": warm}
            if key in self._cold or key in self._starting:
                return {}
        learnt = self._learnt_file(task.generation)
        if not learnt.is_file() and task.generation not in self._taught:
            # the first task runs cold and tells what it imports (a task killed by a limit
            # tells nothing: its fork server then imports nothing ahead, but still forks)
            self._taught.add(task.generation)
            learnt.parent.mkdir(parents=True, exist_ok=True)
            return {"learn": str(learnt), "learn_argv": ["-c", LEARN, task.executable]}
        self._start_soon(task, install, state, key)
        return {}

    def _learnt_file(self, generation: str) -> Path:
        return self._learnt / generation / "imports.txt"

    def _start_soon(
        self, task: TaskSpec, install: InstallFolder, state: sandbox.SandboxState, key: Any
    ) -> None:
        with self._lock:
            self._starting.add(key)
        thread = threading.Thread(
            target=self._start, args=(task, install, state, key), name="warm-start", daemon=True
        )
        thread.start()

    def _start(
        self, task: TaskSpec, install: InstallFolder, state: sandbox.SandboxState, key: Any
    ) -> None:
        server = None
        try:
            server = self._spawn(task, install, state)
        except OSError as exc:
            _LOGGER.warning("no warm interpreter for %s: %s", task.generation, exc)
        with self._lock:
            self._starting.discard(key)
            if server is None:
                self._cold.add(key)
                return
            self._servers[key] = server
        self._keep_within_budget(key)

    def _spawn(
        self, task: TaskSpec, install: InstallFolder, state: sandbox.SandboxState
    ) -> _Server:
        """Start a fork server and wait until it has imported; OSError if it refuses."""
        folder = Path(tempfile.mkdtemp(dir=self._sockets))
        socket_path = str(folder / "s")
        learnt = self._learnt_file(task.generation)
        imports = learnt.read_text(encoding="utf-8").split() if learnt.is_file() else []
        argv = [
            *sandbox.warm_argv(
                state,
                install=install,
                network=task.network,
                tasks_dir=self._settings.tasks_dir,
                sockets=folder,
                script=FORKSERVER,
            ),  # fmt: skip
            str(install.python),
            "-s",
            "-B",
            sandbox.WARM_SCRIPT,
            socket_path,
            str(self._settings.tasks_dir.resolve()),
            ":".join(sandbox.warm_keep(install)),
            *imports,
        ]
        env = clean_env({"HOME": "/tmp", "TMPDIR": "/tmp", "VIRTUAL_ENV": str(install.env)})
        log = open(folder / "forkserver.log", "ab")  # noqa: SIM115 - kept by the process
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        answer = _first_line(process.stdout, _READY_TIMEOUT)
        if answer != "ready":  # it serves no task yet: all of its sandbox goes
            proctree.signal_tree(process.pid, process.pid, signal.SIGKILL, include_root=True)
            process.wait()
            if process.stdin is not None:
                process.stdin.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise OSError(f"its fork server answered {answer or 'nothing'!r}")
        _LOGGER.info("warm interpreter for %s ready (%d names)", task.generation, len(imports))
        return _Server(task.module_id, task.generation, process, socket_path)

    def _retire_others(self, module_id: int, generation: str) -> None:
        """Stop the module's fork servers of other generations (it was updated)."""
        self._stop_where(lambda s: s.module_id == module_id and s.generation != generation)

    def _stop_where(self, condition: Any) -> None:
        with self._lock:
            gone = {k: s for k, s in self._servers.items() if condition(s) or not s.alive()}
            for key in gone:
                del self._servers[key]
        for server in gone.values():
            server.stop()

    def _keep_within_budget(self, newest: Any) -> None:
        """Stop the least recently used fork servers while they hold more than the budget."""
        budget = memory_budget(self._settings)
        with self._lock:
            servers = sorted(self._servers.items(), key=lambda item: item[1].last_used)
        sizes = {key: server.memory() for key, server in servers}
        total = sum(sizes.values())
        for key, server in servers:
            if total <= budget:
                return
            if key == newest and len(servers) > 1:
                continue
            with self._lock:
                self._servers.pop(key, None)
                if sizes[key] > budget:
                    self._cold.add(key)  # alone too large: its tasks start cold
            server.stop()
            total -= sizes[key]

    def sweep(self) -> None:
        """Stop fork servers idle too long or whose generation is gone."""
        idle = self._settings.warm_idle_seconds
        now = time.monotonic()
        installs = self._settings.installs_dir
        self._stop_where(
            lambda s: now - s.last_used > idle or not (installs / s.generation).is_dir()
        )
        # what a removed generation imported is of no more use
        for folder in self._learnt.glob("*") if self._learnt.is_dir() else ():
            if not (installs / folder.name).exists():
                shutil.rmtree(folder, ignore_errors=True)

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(_SWEEP_EVERY):
            try:
                self.sweep()
            except Exception:  # the next round tries again
                _LOGGER.exception("sweeping warm interpreters failed")

    def running(self) -> int:
        """How many fork servers run."""
        with self._lock:
            return sum(1 for s in self._servers.values() if s.alive())

    def close(self) -> None:
        """Stop every fork server (they need not survive this process)."""
        self._stopping.set()
        self._stop_where(lambda _s: True)
        shutil.rmtree(self._sockets, ignore_errors=True)


def _first_line(stream: IO[bytes] | None, timeout: float) -> str:
    """The first line a fork server prints, within ``timeout``; empty if none."""
    if stream is None:
        return ""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return ""
    return stream.readline().decode("ascii", "replace").strip()
