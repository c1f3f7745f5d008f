"""A supervisor that starts its task's sandbox before it has the task: a warm start.

Standard library only. The launcher forks it with a spare's request (``{"spare_dir",
"spec"}``): ``spec`` is what a cold task of the module runs, less the task itself (the
module's sandbox with the spare's output folder, and the spare interpreter, ``spare.py``). It
starts that in the limits a task of the module gets and waits: for the interpreter's
``ready`` (noted as the file ``ready`` in the spare's folder, for the pool), and for its task
on the launcher's pipe. With the task, the spare's output folder and logs become the task's
(renamed: the sandbox's bind follows the folder), the interpreter is sent the task's argv,
environment and folder, and from then on this process supervises it as it would a cold one.
If the interpreter cannot take the task (it has died, or the request does not fit its pipe),
its sandbox is stopped and the task starts cold here. Without a task (the launcher is gone or
drops the spare, a SIGTERM, the interpreter dies: then ``SPARE_DIR.failed`` says so to the
pool), the sandbox is stopped, the spare's folder removed, and this process exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

if __package__:
    from orchestra.executors import limits, supervisor
else:  # run by path with -I -S: the package is not importable, its sibling files are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limits  # type: ignore[no-redef]
    import supervisor  # type: ignore[no-redef]

_TASK_FD, _READY_FD = 3, 4  # the interpreter's descriptors (spare.py)
_PIPE_BYTES = 1 << 20  # room for a task's request: it is written at once, never in part
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032


def serve(request: dict[str, Any], assignment: int) -> None:
    """Start the spare, wait for a task on ``assignment`` and supervise it; never returns."""
    spare_dir = os.path.abspath(request["spare_dir"])
    spec = request["spec"]
    guard = supervisor.new_guard(spec, spare_dir)
    lifeline = supervisor.lifeline_of(spec)
    task_read, task_write = _pipe()
    ready_read, ready_write = _pipe()
    try:
        _grow(task_write)
        fds = {_TASK_FD: task_read, _READY_FD: ready_write}
        pid = supervisor.start_cold(spec, spare_dir, guard, fds=fds)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        supervisor.log_failure(spare_dir)
        _leave(spare_dir, guard, None)
    os.close(task_read)
    os.close(ready_write)
    chunks = _await_task(assignment, ready_read, spare_dir, pid, lifeline)
    if not chunks:
        _leave(spare_dir, guard, pid)
    task = json.loads(b"".join(chunks))
    _take(task, spare_dir, guard, pid, task_write)


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are above the numbers the interpreter is given them at."""
    read, write = os.pipe()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (read, write)]
    os.close(read)
    os.close(write)
    return high[0], high[1]


def _grow(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # above the machine's pipe-max-size: a larger request starts cold


def _await_task(
    assignment: int, ready: int, spare_dir: str, pid: int, lifeline: int | None
) -> list[bytes]:
    """The task's request as it arrives; empty when there will be none."""
    chunks: list[bytes] = []
    watched = [assignment, ready, *([] if lifeline is None else [lifeline])]
    while True:
        if supervisor.reap(pid) is not None:  # the interpreter died: the pool counts it
            _touch(f"{spare_dir}.failed")
            return []
        if supervisor.stop_requested():
            return []
        readable = supervisor.wait_readable(watched)
        if ready in readable:
            if os.read(ready, 64).startswith(b"ready"):
                _touch(os.path.join(spare_dir, "ready"))
            watched.remove(ready)
            os.close(ready)
        if lifeline is not None and lifeline in readable and not os.read(lifeline, 512):
            return []
        if assignment in readable:
            chunk = os.read(assignment, 1 << 16)
            if not chunk:
                return chunks
            chunks.append(chunk)


def _touch(path: str) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError:
        pass


def _take(
    task: dict[str, Any], spare_dir: str, guard: limits.Guard | None, pid: int, task_write: int
) -> None:
    """Become the task's supervisor: hand it to the interpreter, or start it cold; never returns."""
    task_dir = os.path.abspath(task["task_dir"])
    spec = task["spec"]
    started = time.time()
    if guard is not None:
        guard.task_dir = task_dir
    lifeline = supervisor.lifeline_of(spec)

    def work(record: Any) -> None:
        try:
            _hand(spec, spare_dir, task_dir, task_write)
            start, module_pid = "warm", pid
        except (OSError, ValueError, TypeError, KeyError) as exc:
            supervisor.note(task_dir, f"the warm interpreter could not take the task ({exc}):"
                                      " starting cold")  # fmt: skip
            supervisor.stop_tree(pid, 0.0, supervisor.reap(pid))
            _fresh_logs(task_dir)
            start, module_pid = "cold", supervisor.start_cold(spec, task_dir, guard, joined=True)
        finally:
            _remove_tree(spare_dir)
        try:
            result = supervisor.follow(task_dir, spec, record, guard, module_pid, started,
                                       lifeline, start)  # fmt: skip
            record.finish(result)
        finally:
            if guard is not None:
                supervisor.leave_soon(guard)

    supervisor.conclude(task_dir, work)


def _hand(spec: dict[str, Any], spare_dir: str, task_dir: str, task_write: int) -> None:
    """Give the task the spare's folders and send it to the interpreter."""
    request = json.dumps(
        {"argv": spec["module_argv"], "env": spec["env"], "cwd": spec["cwd"]}
    ).encode()
    if len(request) > fcntl.fcntl(task_write, _F_GETPIPE_SZ):
        raise OSError(f"a request of {len(request)} bytes does not fit the interpreter's pipe")
    os.rename(os.path.join(spare_dir, "output"), os.path.join(task_dir, "output"))
    for name in ("stdout.log", "stderr.log"):
        os.rename(os.path.join(spare_dir, name), os.path.join(task_dir, name))
    os.set_blocking(task_write, False)
    try:
        if os.write(task_write, request) != len(request):
            raise OSError("the interpreter's pipe took part of the request")
    finally:
        os.close(task_write)


def _fresh_logs(task_dir: str) -> None:
    """Empty what the interpreter wrote before it had the task, for the cold start."""
    for name in ("stdout.log", "stderr.log"):
        try:
            os.truncate(os.path.join(task_dir, name), 0)
        except OSError:
            pass


def _leave(spare_dir: str, guard: limits.Guard | None, pid: int | None) -> None:
    """No task for this spare: stop its sandbox, remove its folder and cgroups; exit."""
    if pid is not None:
        supervisor.stop_tree(pid, 0.0, supervisor.reap(pid))
    _remove_tree(spare_dir)
    if guard is not None:
        supervisor.leave_soon(guard)
    os._exit(0)


def _remove_tree(folder: str) -> None:
    """Remove the spare's folder, with what is left in it (its output, when it had no task)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _quietly(os.unlink, os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            _quietly(os.unlink if os.path.islink(path) else os.rmdir, path)
    _quietly(os.rmdir, folder)


def _quietly(action: Any, path: str) -> None:
    try:
        action(path)
    except OSError:
        pass
