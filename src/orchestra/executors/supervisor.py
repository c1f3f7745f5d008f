"""The per-task supervisor: starts the module, waits for it, kills its tree, records the result.

Standard library only, so that it starts fast and outlives the server. Run it as
``python -I -S supervisor.py TASK_DIR [--detach]``, or fork it from the launcher
(``launcher.py``), which calls :func:`run` in a fresh session.

It takes the spec ({argv, cwd, env, timeout, grace}) from the launcher, or reads it from
``TASK_DIR/spec.json``; becomes a child subreaper so that grandchildren which detach
(``setsid``, double fork) stay below it, starts the module in a new session with its output
streamed to ``stdout.log`` / ``stderr.log``, writes ``supervisor.json`` (its pid and the
module's, with start times against pid reuse), and waits. SIGTERM means "kill the task"; the
timeout does the same. Either way the whole tree gets SIGTERM, then SIGKILL after the grace
period. Finally ``result.json`` is written atomically:
{exit_code, signal, reason: exited|timeout|killed|start_failed, error, started, finished}.

Creating a file is the slow part of writing one on some machines (a third of a millisecond),
so only the module's logs are created before it starts; the rest is created while it runs,
and ``result.json`` goes into place with one write and a rename once it has ended.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

if __package__:
    from orchestra.executors import proctree
else:  # run by path with -I -S: the package is not importable, its sibling file is
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proctree  # type: ignore[no-redef]

PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.05  # seconds between looks at the tree while it is being stopped
_REAP_LIMIT = 10.0  # seconds to wait for SIGKILLed processes to disappear


class _State:
    """What the signal handlers learnt."""

    stop_requested = False
    wake_read = -1


def preload() -> None:
    """Import what :func:`run` needs lazily, so that a forked copy starts with it loaded."""
    import ctypes

    ctypes.CDLL(None, use_errno=True)


def _set_subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # without it, detached grandchildren are reached through the process group only


def _on_stop(_signum: int, _frame: Any) -> None:
    _State.stop_requested = True


def _install_signals() -> None:
    read, write = os.pipe()
    os.set_blocking(write, False)
    _State.wake_read = read
    signal.set_wakeup_fd(write)
    # Python handlers (never SIG_IGN): exec resets them, so the module gets default ones
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGHUP, lambda *_: None)


def _wait_for_signal(timeout: float) -> None:
    ready, _, _ = select.select([_State.wake_read], [], [], max(timeout, 0.0))
    if ready:
        os.read(_State.wake_read, 512)


class _JsonFile:
    """A JSON file put in place atomically: a temporary file (created early), then a rename."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = f"{path}.{os.getpid()}.tmp"
        self.fd: int | None = None

    def create(self) -> None:
        """Create the temporary file now, ahead of the write."""
        if self.fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            self.fd = os.open(self.tmp, flags, 0o644)

    def commit(self, data: dict[str, Any]) -> None:
        """Write ``data`` and rename the file into place."""
        # rename is atomic; no fsync: this guards against a dying process, not a dying machine
        self.create()
        assert self.fd is not None
        fd, self.fd = self.fd, None
        try:
            view = memoryview(json.dumps(data).encode())
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)


def _write_json(path: str, data: dict[str, Any]) -> None:
    _JsonFile(path).commit(data)


def _redirect_stdio() -> None:
    # nothing is printed on the way; a failure's traceback goes to supervisor.log
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _log_failure(task_dir: str) -> None:
    import traceback

    try:
        with open(os.path.join(task_dir, "supervisor.log"), "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
    except OSError:
        pass


def _spawn(spec: dict[str, Any], task_dir: str) -> subprocess.Popen[bytes]:
    with (
        open(os.path.join(task_dir, "stdout.log"), "ab") as out,
        open(os.path.join(task_dir, "stderr.log"), "ab") as err,
    ):
        return subprocess.Popen(
            spec["argv"],
            cwd=spec.get("cwd") or None,
            env=spec.get("env"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def _reap(module_pid: int) -> int | None:
    """Reap every finished child (orphans included); the module's wait status if it ended."""
    status = None
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == module_pid:
            status = raw


def _has_children() -> bool:
    """True while any process runs below us (a subreaper inherits every orphan below it)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return True
        except ChildProcessError:
            return False


def _watch(module_pid: int, timeout: float | None) -> tuple[str, int | None]:
    """Wait until the module ends, a stop is requested or the time is up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _reap(module_pid)
        if status is not None:
            return "exited", status
        if _State.stop_requested:
            return "killed", None
        remaining = 3600.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", None
        _wait_for_signal(min(remaining, 3600.0))


def _stop_tree(module_pid: int, grace: float, status: int | None) -> int | None:
    """SIGTERM the module's group and every descendant, SIGKILL what outlives ``grace``."""
    me = os.getpid()
    proctree.signal_tree(me, module_pid, signal.SIGTERM)
    status = _drain(module_pid, status, time.monotonic() + grace)
    if status is None or proctree.descendants(me):
        proctree.signal_tree(me, module_pid, signal.SIGKILL)
        status = _drain(module_pid, status, time.monotonic() + _REAP_LIMIT, kill=True)
    return status


def _drain(module_pid: int, status: int | None, deadline: float, kill: bool = False) -> int | None:
    me = os.getpid()
    while True:
        reaped = _reap(module_pid)
        status = reaped if reaped is not None else status
        if status is not None and not proctree.descendants(me):
            return status
        if time.monotonic() >= deadline:
            return status
        if kill:  # a process may have forked between two rounds: keep killing
            proctree.signal_tree(me, module_pid, signal.SIGKILL)
        _wait_for_signal(_POLL)


def _result(reason: str, status: int | None, started: float) -> dict[str, Any]:
    code = None if status is None else os.waitstatus_to_exitcode(status)
    return {
        "exit_code": code if code is not None and code >= 0 else None,
        "signal": -code if code is not None and code < 0 else None,
        "reason": reason,
        "error": None,
        "started": started,
        "finished": time.time(),
    }


def _supervise(
    task_dir: str, spec: dict[str, Any], result: _JsonFile, record_spec: bool
) -> dict[str, Any]:
    started = time.time()
    try:
        proc = _spawn(spec, task_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return {**_result("start_failed", None, started), "error": str(exc)}
    # from here on the module is starting: what is written now costs it no time
    me = os.getpid()
    _write_json(
        os.path.join(task_dir, "supervisor.json"),
        {
            "pid": me,
            "start": proctree.start_time(me),
            "module_pid": proc.pid,
            "module_start": proctree.start_time(proc.pid),
        },
    )
    result.create()
    if record_spec:  # handed over by the launcher: kept beside the logs for the record
        _write_json(os.path.join(task_dir, "spec.json"), spec)
    reason, status = _watch(proc.pid, spec.get("timeout"))
    grace = float(spec.get("grace", 5.0))
    if reason != "exited" or _has_children():
        # also when the module ended normally: what it left running dies with the task
        status = _stop_tree(proc.pid, grace, status)
    proc.returncode = 0  # reaped above; keeps Popen from reaping or warning later
    return _result(reason, status, started)


def prepare() -> None:
    """Set this process up as a supervisor before it has a task: stdio, signals, subreaper."""
    gc.disable()  # a short-lived process: no collections touching the pages shared after fork
    _redirect_stdio()
    _install_signals()
    _set_subreaper()


def run(task_dir: str, spec: dict[str, Any] | None = None, *, prepared: bool = False) -> None:
    """Supervise the task in ``task_dir`` (``spec``, or its spec.json) to its end; never returns."""
    code = 0
    result = _JsonFile(os.path.join(task_dir, "result.json"))
    try:
        if not prepared:
            prepare()
        given = spec is not None
        if spec is None:
            with open(os.path.join(task_dir, "spec.json"), encoding="utf-8") as handle:
                spec = json.load(handle)
        result.commit(_supervise(task_dir, spec, result, record_spec=given))
    except BaseException as exc:  # the result file must say what happened, whatever it was
        code = 1
        _log_failure(task_dir)
        try:
            failed = {**_result("start_failed", None, time.time()), "error": repr(exc)}
            result.commit(failed)
        except OSError:
            pass
    # skip interpreter shutdown: the waiting server hears about the exit sooner
    os._exit(code)


def _detach_and_run(task_dir: str) -> None:
    """Fork; the parent prints the supervisor's pid and start time, the child runs the task."""
    pid = os.fork()
    if pid == 0:
        run(task_dir)
    sys.stdout.write(json.dumps({"pid": pid, "start": proctree.start_time(pid)}) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[2] == "--detach":
        _detach_and_run(sys.argv[1])
    run(sys.argv[1])
