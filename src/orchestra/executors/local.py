"""The local executor: one detached supervisor process per task, on this machine.

It resolves a task's spec (module generation, arguments) into the supervisor's launch
request (argv, working directory, environment) in this data folder; the supervisor's own
files are read back by ``executors.outcomes``.

A server's tasks outlive it (a restarted server adopts them). A worker's must not outlive
the worker: built ``tied``, the executor holds the only writing end of a pipe (the
lifeline) whose reading end every supervisor watches, so that the kernel closes it, and
each supervisor stops its task, when the worker process ends in any way, SIGKILL included.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestra.errors import OrchestraError
from orchestra.executors import outcomes, proctree, sandbox
from orchestra.executors.base import Handle, TaskSpec
from orchestra.executors.warm import (
    LEARN,
    SPARE_OUTPUT,
    SPARE_PROGRAM,
    SPARE_PROGRAM_INSIDE,
    Kind,
    WarmPool,
)
from orchestra.models.store import ModelStore
from orchestra.process import clean_env
from orchestra.storage.files import InstallFolder, TaskFolder
from orchestra.tasks.status import Outcome

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
ModelFolders = Callable[[int, int, str], Path]  # (module, version, digest) -> its folder here
_HERE = Path(__file__).resolve().parent
SUPERVISOR = _HERE / "supervisor.py"
LAUNCHER = _HERE / "launcher.py"
_START_TIMEOUT = 30.0  # seconds a detached supervisor may take to report its pid


class LocalExecutor:
    """Starts supervisors (forked by a launcher while a server runs), watches and kills them."""

    name = "local"
    runs_here = True

    def __init__(
        self, settings: Settings, *, tied: bool = False, models: ModelFolders | None = None
    ) -> None:
        self._settings = settings
        self._tied = tied
        self._lifeline: tuple[int, int] | None = None  # (read, write), while open and tied
        # where a model version's files are: the store here, a worker's cache there
        self.models_folder: ModelFolders = models or self._stored_version
        self._lock = threading.Lock()
        self._users = 0
        self._launcher: _Launcher | None = None
        self._watcher: _ExitWatcher | None = None
        self._warm: WarmPool | None = None

    def open(self) -> None:
        """Start the launcher and the exit watcher (shared by every user of this executor)."""
        with self._lock:
            self._users += 1
            if self._users == 1:
                # non-inheritable: only a process that is given the reading end holds it
                self._lifeline = os.pipe() if self._tied else None
                cgroups = sandbox.prepared_cgroups(self._settings)
                self._launcher = _Launcher(self._settings.home, cgroups, self._lifeline_fds())
                self._watcher = _ExitWatcher()
                if self._settings.warm:
                    self._warm = WarmPool(self._settings, self._call_launcher)

    def _call_launcher(self, request: dict[str, Any]) -> dict[str, Any]:
        launcher = self._launcher
        if launcher is None:
            raise OSError("the executor is closed")
        return launcher.call(request)

    def _lifeline_fds(self) -> tuple[int, ...]:
        return () if self._lifeline is None else (self._lifeline[0],)

    def close(self) -> None:
        """Stop the launcher and the watcher once the last user is gone.

        Tasks go on, unless the executor is tied: closing the lifeline stops them.
        """
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._launcher is None or self._watcher is None:
                return
            launcher, watcher, lifeline = self._launcher, self._watcher, self._lifeline
            warm = self._warm
            self._launcher = self._watcher = self._lifeline = self._warm = None
        if warm is not None:
            warm.close()
        launcher.close()  # and with it every spare interpreter
        watcher.stop()
        for fd in lifeline or ():
            os.close(fd)

    def send(self, spec: TaskSpec) -> None:
        """Nothing to send: the server that claims a task starts it."""

    def reconcile(self) -> None:
        """Nothing of its own: the runner settles local tasks from their folders."""

    def signal_kill(self, task_id: int, worker: str | None) -> None:
        """Stop the task's supervisor if it can be found now."""
        handle = self.find(task_id)
        if handle is not None:
            self.kill(handle)

    def folder(self, task_id: int) -> TaskFolder:
        """The task's folder in this data folder."""
        return TaskFolder(self._settings.tasks_dir, task_id)

    def start(self, spec: Mapping[str, Any]) -> Handle:
        """Start a supervisor for the task that ``spec`` (as stored) describes."""
        task_id = int(spec["task_id"])
        return self.launch(task_id, self.launch_request(task_id, spec))

    def launch(self, task_id: int, request: dict[str, Any]) -> Handle:
        """Start a supervisor in its own session for a launch request (argv, cwd, env, ...)."""
        task_dir = self.folder(task_id).root
        (task_dir / "output").mkdir(parents=True, exist_ok=True)  # made at submit when queued
        launcher = self._launcher
        reply: dict[str, Any] | None = None
        if self._lifeline is not None:  # the same number in every process that inherits it
            request = {**request, "lifeline": self._lifeline[0]}
        if launcher is not None:
            try:
                # the request travels through the pipe (the task's row keeps the spec): no file
                reply = launcher.launch(task_dir, request)
            except OSError as exc:
                _LOGGER.warning("launcher failed (%s); starting task %s directly", exc, task_id)
        if reply is None:
            (task_dir / "spec.json").write_text(json.dumps(request), encoding="utf-8")
            reply = _start_detached(task_dir, self._lifeline_fds())
        return {"pid": int(reply["pid"]), "start": reply.get("start"), "task_dir": str(task_dir),
                "warm": bool(reply.get("warm"))}  # fmt: skip

    def launch_request(self, task_id: int, spec: Mapping[str, Any]) -> dict[str, Any]:
        """What the supervisor runs: the spec resolved in this data folder; OSError if none."""
        try:
            task = TaskSpec.from_json(spec)
        except ValueError as exc:
            raise OSError(str(exc)) from exc
        install = InstallFolder(self._settings.installs_dir, task.generation)
        output = self.folder(task_id).output
        env_bin = install.env / "bin"
        env = clean_env(
            {"PATH": f"{env_bin}:{clean_env()['PATH']}", "VIRTUAL_ENV": str(install.env),
             "ORCHESTRA_TASK_ID": str(task_id)}
        )  # fmt: skip
        readonly = self._model_folder(task, env)
        argv = [str(install.python), "-m", task.executable, str(output), *task.args]
        request = {"task_id": task_id, "argv": argv, "cwd": str(install.code), "env": env,
                   "timeout": task.timeout, "grace": task.grace}  # fmt: skip
        pool = self._warm if task.warm else None
        kind = None if pool is None else _kind(task, readonly)
        learnt = None if pool is None or kind is None else pool.learning(kind)
        if learnt is not None:  # a cold run that tells what it imported, for the spares
            request["argv"] = [argv[0], "-c", LEARN, *argv[2:]]
            request["learn"] = str(learnt)
        confine = functools.partial(
            sandbox.confine, settings=self._settings, install=install, network=task.network,
            limits=task.limits,
        )  # fmt: skip
        try:
            confined = confine(request, output=output, readonly=readonly)
        except OrchestraError as exc:  # ORCHESTRA_SANDBOX=required and none here
            raise OSError(str(exc)) from exc
        if pool is not None and kind is not None:
            confined["module_argv"] = argv[2:]  # what a spare interpreter is sent (spare.py)
            recipe = functools.partial(self._spare_spec, confine, request, readonly)
            spare = pool.take(kind, recipe)
            if spare is not None:
                confined["spare"] = spare
        return confined

    def _spare_spec(
        self, confine: Callable[..., dict[str, Any]], request: dict[str, Any],
        readonly: list[Path], folder: Path, names: list[str],
    ) -> dict[str, Any]:  # fmt: skip
        """A spare interpreter's spec: the task's sandbox and limits, less the task itself,
        and its program (read-only)."""
        boxed = sandbox.detect(self._settings.sandbox).active
        output = folder / "output"
        inside = SPARE_OUTPUT if boxed else None
        program = SPARE_PROGRAM_INSIDE if boxed else str(SPARE_PROGRAM)
        python = request["argv"][0]
        env = {k: v for k, v in request["env"].items() if k != "ORCHESTRA_TASK_ID"}
        spec = {"argv": [python, program, inside or str(output), *names],
                "cwd": request["cwd"], "env": env}  # fmt: skip
        spec = confine(spec, output=output, readonly=readonly, output_at=inside,
                       readonly_at=[(SPARE_PROGRAM, SPARE_PROGRAM_INSIDE)])  # fmt: skip
        if self._lifeline is not None:  # kept from the interpreter, as from a task
            spec["lifeline"] = self._lifeline[0]
        return spec

    def _model_folder(self, task: TaskSpec, env: dict[str, str]) -> list[Path]:
        """The model version a task reads (a run's, or a training's base), named in ``env``."""
        if not task.model:
            return []
        model = task.model
        folder = self.models_folder(int(model["module_id"]), int(model["version"]),
                                    str(model["digest"]))  # fmt: skip
        variable = "ORCHESTRA_BASE_MODEL" if task.kind == "train" else "ORCHESTRA_MODEL_DIR"
        env[variable] = str(folder)
        return [folder]

    def _stored_version(self, module_id: int, version: int, digest: str) -> Path:
        """A version's folder in this data folder's model store."""
        folder = ModelStore(self._settings.models_dir).version_dir(module_id, version)
        if not folder.is_dir():
            raise OSError(f"model version {version} of module {module_id} has no files here")
        return folder

    def find(self, task_id: int) -> Handle | None:
        """The supervisor's handle from its record; None before it wrote one."""
        task_dir = self.folder(task_id).root
        data = _supervisor_file(task_dir)
        try:
            return {"pid": int(data["pid"]), "start": data.get("start"), "task_dir": str(task_dir)}
        except (KeyError, TypeError, ValueError):
            return None

    def is_alive(self, handle: Handle) -> bool:
        """True while the supervisor behind ``handle`` runs."""
        return proctree.is_alive(int(handle.get("pid", 0)), handle.get("start"))

    def kill(self, handle: Handle) -> None:
        """SIGTERM the supervisor (it kills the tree); without one, kill the module's tree."""
        pid, start = int(handle.get("pid", 0)), handle.get("start")
        if proctree.is_alive(pid, start):
            try:
                os.kill(pid, signal.SIGTERM)
                return
            except ProcessLookupError:
                pass
        module = _module_identity(Path(handle.get("task_dir", "")))
        if module is not None:
            proctree.kill_tree_direct(module[0], module[1], self._settings.kill_grace)

    def watch(self, handle: Handle, on_exit: Callable[[], None]) -> bool:
        """Call ``on_exit`` from the watcher thread when the supervisor ends."""
        watcher = self._watcher
        if watcher is None:
            return False
        watcher.add(int(handle.get("pid", 0)), handle.get("start"), on_exit)
        return True

    def outcome(self, task_id: int, spec: Mapping[str, Any]) -> Outcome | None:
        """How the task ended, from the supervisor's result; None while it has none."""
        folder = self.folder(task_id)
        result = outcomes.read_result(folder)
        return None if result is None else outcomes.outcome_from_result(folder, result, spec)

    def orphan_outcome(self, task_id: int, handle: Handle | None, kill_requested: bool) -> Outcome:
        """A running task whose supervisor is gone without a result."""
        return outcomes.orphan_outcome(handle, kill_requested)

    def spares(self) -> dict[str, int]:
        """How many spare interpreters are ready, and how many starting."""
        pool = self._warm
        return {"ready": 0, "starting": 0} if pool is None else pool.spares()


def _kind(task: TaskSpec, readonly: list[Path]) -> Kind:
    """What a spare interpreter for ``task`` must be made for (see warm.Kind)."""
    limits = json.dumps(dict(task.limits or {}), sort_keys=True)
    model = str(readonly[0]) if readonly else ""
    return Kind(task.module_id, task.generation, task.executable, task.network, model, limits)


def _supervisor_file(task_dir: Path) -> dict[str, Any]:
    """The identity line the supervisor wrote: supervisor.json, or result.json once renamed."""
    for name in ("supervisor.json", "result.json"):
        try:
            with open(task_dir / name, encoding="utf-8") as handle:
                data = json.loads(handle.readline())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "pid" in data:
            return data
    return {}


def _module_identity(task_dir: Path) -> tuple[int, int | None] | None:
    data = _supervisor_file(task_dir)
    try:
        return int(data["module_pid"]), data.get("module_start")
    except (KeyError, TypeError, ValueError):
        return None


def _start_detached(task_dir: Path, pass_fds: tuple[int, ...] = ()) -> dict[str, Any]:
    """Start a supervisor that is nobody's child here (it forks away and reports its pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(SUPERVISOR), str(task_dir), "--detach"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    try:
        out, _ = proc.communicate(timeout=_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise OSError("the supervisor did not start in time") from None
    try:
        return dict(json.loads(out))
    except ValueError:
        raise OSError(f"the supervisor did not start (exit status {proc.returncode})") from None


class _Launcher:
    """The pre-started process that forks supervisors, one request at a time."""

    def __init__(
        self, log_dir: Path | None, cgroups: list[str] | None = None, pass_fds: tuple[int, ...] = ()
    ) -> None:
        self._lock = threading.Lock()
        self._log_dir = log_dir
        self._cgroups = cgroups or []
        self._pass_fds = pass_fds  # handed down to every supervisor it forks (the lifeline)
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        log: IO[bytes] | int = subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self._log_dir / "launcher.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), *self._cgroups],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                # its own session: a Ctrl-C meant for the server must not reach it mid-fork
                start_new_session=True,
                pass_fds=self._pass_fds,
            )
        finally:
            if not isinstance(log, int):
                log.close()
        return self._proc

    def launch(self, task_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
        """Fork a supervisor for ``task_dir`` running ``spec``; its pid and start time."""
        return self.call({"task_dir": str(task_dir), "spec": spec})

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the launcher (a launch, a spare to prepare or drop); its answer."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._spawn()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except OSError as exc:
                raise OSError(f"the launcher is gone: {exc}") from exc
        if not line:
            raise OSError("the launcher exited")
        reply = json.loads(line)
        if "error" in reply:
            raise OSError(reply["error"])
        return dict(reply)

    def close(self) -> None:
        """Let the launcher exit (end of its input); the supervisors it forked go on."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _ExitWatcher:
    """One thread that waits on process file descriptors and calls back when one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int | None, Callable[[], None]]] = []
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="orchestra-exits", daemon=True)
        self._thread.start()

    def add(self, pid: int, start: int | None, on_exit: Callable[[], None]) -> None:
        """Watch ``pid``; ``on_exit`` runs in the watcher thread (at once if already gone)."""
        fd: int | None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
        if self._stopping:
            if fd is not None:
                os.close(fd)
            return
        if fd is not None and not proctree.is_alive(pid, start):
            os.close(fd)  # gone, or the pid now names another process
            fd = None
        with self._lock:
            self._pending.append((fd, on_exit))
        os.write(self._wake_write, b"x")

    def stop(self) -> None:
        """End the thread; watched processes are left alone."""
        self._stopping = True
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        callbacks: dict[int, Callable[[], None]] = {}
        while not self._stopping:
            ready: list[Callable[[], None]] = []
            for fd, _ in poller.poll():
                if fd == self._wake_read:
                    os.read(self._wake_read, 4096)
                    ready += self._take_pending(poller, callbacks)
                elif fd in callbacks:
                    poller.unregister(fd)
                    os.close(fd)
                    ready.append(callbacks.pop(fd))
            for callback in ready:
                _call(callback)
        for fd in callbacks:
            os.close(fd)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _take_pending(
        self, poller: select.poll, callbacks: dict[int, Callable[[], None]]
    ) -> list[Callable[[], None]]:
        with self._lock:
            pending, self._pending = self._pending, []
        now = []
        for fd, callback in pending:
            if fd is None:
                now.append(callback)
            else:
                poller.register(fd, select.POLLIN)
                callbacks[fd] = callback
        return now


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        # one task's bookkeeping failing must not stop the watching of the others
        _LOGGER.exception("task exit callback failed")
