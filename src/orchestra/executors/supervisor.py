"""The per-task supervisor: starts the module, waits for it, kills its tree, records the result.

Standard library only, so that it starts fast and outlives the server. Run it as
``python -I -S supervisor.py TASK_DIR [--detach]``, or fork it from the launcher
(``launcher.py``), which calls :func:`run` in a fresh session.

It takes the spec ({argv, cwd, env, timeout, grace}) from the launcher, or reads it from
``TASK_DIR/spec.json``; becomes a child subreaper so that grandchildren which detach
(``setsid``, double fork) stay below it, starts the module in a new session with its output
streamed to ``stdout.log`` / ``stderr.log``, writes ``supervisor.json`` (one line: its pid and
the module's, with start times against pid reuse), and waits. SIGTERM means "kill the task";
the timeout does the same, and so does the end of the spec's ``lifeline`` (a pipe whose
only writer is a worker: it closes when the worker dies, however it dies). Either way the
whole tree gets SIGTERM, then SIGKILL after the grace period. Finally the result is
appended to ``supervisor.json`` as a second line and the file is renamed to
``result.json``, so that ``result.json`` appears whole, at once: {exit_code, signal,
reason: exited|timeout|killed|orphaned|start_failed, error, started, finished}.

Creating a file is the slow part of writing one on some machines (up to a millisecond on a
busy ext4 without a journal), so a task creates three here: its two logs before the module
starts, and one record for both the identity and the result while it runs.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import time

# typing is left out at run time: every module this process loads grows each forked supervisor
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

if __package__:
    from orchestra.executors import limits, proctree
else:  # run by path with -I -S: the package is not importable, its sibling files are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limits  # type: ignore[no-redef]
    import proctree  # type: ignore[no-redef]

PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.05  # seconds between looks at the tree while it is being stopped
_REAP_LIMIT = 10.0  # seconds to wait for SIGKILLed processes to disappear


class _State:
    """What the signal handlers learnt."""

    stop_requested = False
    orphaned = False  # the lifeline closed: whoever started the task is gone
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


def stop_requested() -> bool:
    """True once a SIGTERM asked for the task to be stopped."""
    return _State.stop_requested


def wait_readable(fds: list[int], timeout: float | None = None) -> list[int]:
    """Wait for a signal or one of ``fds`` to be readable; those that are."""
    ready, _, _ = select.select([_State.wake_read, *fds], [], [], timeout)
    if _State.wake_read in ready:
        os.read(_State.wake_read, 512)
    return [fd for fd in ready if fd != _State.wake_read]


def _wait_for_signal(timeout: float, lifeline: int | None = None) -> None:
    ready = wait_readable([] if lifeline is None else [lifeline], max(timeout, 0.0))
    if lifeline is not None and lifeline in ready and not os.read(lifeline, 512):
        _State.orphaned = True  # nobody writes to it: readable means its writer is gone


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _json_line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


class _Record:
    """``supervisor.json`` while the task runs, renamed to ``result.json`` when it has ended."""

    def __init__(self, task_dir: str) -> None:
        self.running = os.path.join(task_dir, "supervisor.json")
        self.final = os.path.join(task_dir, "result.json")
        self.fd: int | None = None

    def _create(self, path: str, line: bytes) -> int:
        # renames are atomic: readers see no file or a whole first line, never a part.
        # No fsync: this guards against a dying process, not a dying machine.
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, line)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def start(self, identity: dict[str, Any]) -> None:
        """Publish who supervises the task (the first line)."""
        self.fd = self._create(self.running, _json_line(identity))

    def finish(self, result: dict[str, Any]) -> None:
        """Append the result and rename the record into ``result.json``."""
        fd, self.fd = self.fd, None
        if fd is None:  # the module never started: the result alone
            os.close(self._create(self.final, _json_line(result)))
            return
        try:
            _write_all(fd, _json_line(result))
        finally:
            os.close(fd)
        os.replace(self.running, self.final)


def _redirect_stdio() -> None:
    # nothing is printed on the way; a failure's traceback goes to supervisor.log
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def log_failure(task_dir: str) -> None:
    import traceback

    try:
        with open(os.path.join(task_dir, "supervisor.log"), "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
    except OSError:
        pass


def spawn(spec: dict[str, Any], task_dir: str, fds: dict[int, int] | None = None) -> int:
    """Start the module in a new session, its output appended to the task's logs; its pid.

    posix_spawn rather than subprocess: no Python runs between the fork and the exec, so
    the start costs this process almost nothing. Every descriptor Python opened is closed at
    the exec (they are not inheritable) but ``fds`` (its number there: ours); SIGPIPE and
    SIGXFSZ, which Python ignores, get their defaults back as subprocess would give them.
    """
    argv = [str(a) for a in spec["argv"]]
    env = spec.get("env")
    if spec.get("cwd"):
        os.chdir(spec["cwd"])  # this process has no other use for its working directory
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.path.join(task_dir, "stdout.log"), log_flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, os.path.join(task_dir, "stderr.log"), log_flags, 0o644),
    ]
    if spec.get("learn"):  # what the module imports is written on descriptor 3 at its exit
        learnt = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        actions.append((os.POSIX_SPAWN_OPEN, 3, _learning(spec["learn"]), learnt, 0o644))
    for number, fd in (fds or {}).items():
        actions.append((os.POSIX_SPAWN_DUP2, fd, number))
    return os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ) if env is None else {str(k): str(v) for k, v in env.items()},
        file_actions=actions,
        setsid=True,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
    )


def _learning(path: str) -> str:
    return f"{path}.{os.getpid()}.tmp"


def _learnt(spec: dict[str, Any]) -> None:
    """Keep what a cold run imported (written at its exit), for the module's warm interpreter."""
    path = spec.get("learn")
    if not path:
        return
    try:
        if os.path.getsize(_learning(path)):
            os.replace(_learning(path), path)
        else:
            os.unlink(_learning(path))
    except OSError:
        pass


def note(task_dir: str, text: str) -> None:
    try:
        with open(os.path.join(task_dir, "supervisor.log"), "a", encoding="utf-8") as log:
            log.write(text + "\n")
    except OSError:
        pass


def reap(module_pid: int) -> int | None:
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


def _watch(
    module_pid: int,
    timeout: float | None,
    guard: limits.Guard | None,
    lifeline: int | None,
) -> tuple[str, int | None]:
    """Wait until the module ends, or a stop, the timeout, a limit or the lifeline's end."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = 3600.0 if guard is None or guard.interval is None else guard.interval
    while True:
        status = reap(module_pid)
        if status is not None:
            return "exited", status
        if _State.stop_requested:
            return "killed", None
        if _State.orphaned:
            return "orphaned", None
        remaining = 3600.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", None
        if guard is not None and guard.interval is not None and guard.check():
            return "limit", None
        _wait_for_signal(min(remaining, interval), lifeline)


def lifeline_of(spec: dict[str, Any]) -> int | None:
    """The lifeline's descriptor, kept from the module (it inherited it from the launcher)."""
    fd = spec.get("lifeline")
    if not isinstance(fd, int):
        return None
    try:
        os.set_inheritable(fd, False)
    except OSError:  # not open: its writer was gone before this process started
        _State.orphaned = True
        return None
    return fd


def stop_tree(module_pid: int, grace: float, status: int | None) -> int | None:
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
        reaped = reap(module_pid)
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
    task_dir: str, spec: dict[str, Any], record: _Record, guard: limits.Guard | None
) -> dict[str, Any]:
    started = time.time()
    lifeline = lifeline_of(spec)
    try:
        module_pid = start_cold(spec, task_dir, guard)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        if guard is not None:
            guard.leave()
        return {**_result("start_failed", None, started), "error": str(exc)}
    return follow(task_dir, spec, record, guard, module_pid, started, lifeline)


def start_cold(
    spec: dict[str, Any],
    task_dir: str,
    guard: limits.Guard | None,
    *,
    joined: bool = False,
    fds: dict[int, int] | None = None,
) -> int:
    """Spawn the module in its limits (``joined``: this process is in its cgroups already)."""
    try:
        if guard is not None:
            guard.arm() if joined else guard.enter()
        return spawn(spec, task_dir, fds)
    finally:
        if guard is not None:
            guard.spawned()


def follow(
    task_dir: str,
    spec: dict[str, Any],
    record: _Record,
    guard: limits.Guard | None,
    module_pid: int,
    started: float,
    lifeline: int | None,
    start: str = "cold",
) -> dict[str, Any]:
    """Watch a started module to its end (or stop it) and say how it ended."""
    # from here on the module is starting: what is written now costs it no time
    me = os.getpid()
    record.start(
        {
            "pid": me,
            "start": proctree.start_time(me),
            "module_pid": module_pid,
            "module_start": proctree.start_time(module_pid),
        }
    )
    reason, status = _watch(module_pid, spec.get("timeout"), guard, lifeline)
    if reason != "exited" or _has_children():
        # also when the module ended normally: what it left running dies with the task
        status = stop_tree(module_pid, float(spec.get("grace", 5.0)), status)
    result = _result(reason, status, started)
    result["start"] = start
    _learnt(spec)
    if guard is not None:
        _judge(guard, result, status, reason)
    elif reason == "exited" and result["exit_code"] != 0 and limits.disk_full(task_dir):
        result["disk_full"] = True
    return result


def _judge(guard: limits.Guard, result: dict[str, Any], status: int | None, reason: str) -> None:
    """Name the limit that ended the task, if one did, in ``result``."""
    crossed = guard.verdict(status) if reason in ("exited", "limit") else None
    if crossed is not None:
        result["reason"] = "limit"
        result["limit"] = crossed
        result["error"] = limits.message(crossed, guard.values[crossed])
    elif reason == "exited" and result["exit_code"] != 0:
        result["disk_full"] = limits.disk_full(guard.task_dir)


def leave_soon(guard: limits.Guard) -> None:
    """Remove the task's cgroups in a child of ours, so that we can end at once.

    The kernel takes ~10 ms to let go of a group whose last process has just ended, and the
    server hears of the task's end when this process exits (benchmark 4, the task overhead).
    """
    if not guard.holds_groups:
        return
    try:
        if os.fork() != 0:
            return
    except OSError:
        guard.leave()
        return
    try:
        guard.leave()
    finally:
        os._exit(0)


def prepare(cgroups: list[str] | None = None) -> None:
    """Set this process up as a supervisor before it has a task.

    Standard streams, signals, the subreaper flag, and a cgroup made and joined below each of
    ``cgroups`` (see ``limits.prepare``).
    """
    gc.disable()  # a short-lived process: no collections touching the pages shared after fork
    _redirect_stdio()
    _install_signals()
    _set_subreaper()
    limits.prepare(cgroups or [])


def new_guard(spec: dict[str, Any], task_dir: str) -> limits.Guard | None:
    """What enforces the task's limits, when it has some (or its cgroups were made ahead)."""
    if spec.get("limits") or limits.has_prepared():
        return limits.Guard(spec.get("limits") or {}, task_dir)
    return None


def run(task_dir: str, spec: dict[str, Any] | None = None, *, prepared: bool = False) -> None:
    """Supervise the task in ``task_dir`` (``spec``, or its spec.json) to its end; never returns."""
    task_dir = os.path.abspath(task_dir)  # the module's start changes the working directory

    def work(record: _Record) -> None:
        if not prepared:
            prepare()
        if spec is None:
            with open(os.path.join(task_dir, "spec.json"), encoding="utf-8") as handle:
                task = json.load(handle)
        else:
            task = spec
        guard = new_guard(task, task_dir)
        try:
            record.finish(_supervise(task_dir, task, record, guard))
        finally:
            if guard is not None:
                leave_soon(guard)

    conclude(task_dir, work)


def conclude(task_dir: str, work: Callable[[_Record], None]) -> None:
    """Run ``work``, which finishes the task's record, see that the record says how the task
    ended whatever happened, and exit (never returns)."""
    code = 0
    record = _Record(task_dir)
    try:
        work(record)
    except BaseException as exc:  # the result file must say what happened, whatever it was
        code = 1
        log_failure(task_dir)
        try:
            record.finish({**_result("start_failed", None, time.time()), "error": repr(exc)})
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
