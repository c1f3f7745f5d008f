"""A pre-started process that forks one supervisor per task (standard library only).

Starting a fresh interpreter for every supervisor costs 30+ ms here (imports included);
forking this already-loaded process costs about one, and even that is kept off a task's
path: one supervisor is always forked ahead, set up (session, signal handlers, subreaper,
the cgroups its task's limits need: the launcher's arguments name where they go) and
waiting on a pipe. The server writes one JSON line per task
(``{"task_dir": ..., "spec": {...}}``) to the launcher's standard input; the launcher hands
it to the waiting supervisor, answers ``{"pid", "start"}`` and forks the next one.
It exits when its standard input closes (the server stopped or died); a waiting supervisor
then sees the end of its pipe and exits, while those running tasks, in their own sessions,
carry on.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

# typing is left out at run time: every module this process loads grows each forked supervisor
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

if __package__:
    from orchestra.executors import limits, proctree, supervisor
else:  # run by path with -I -S: the package is not importable, its sibling files are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limits  # type: ignore[no-redef]
    import proctree  # type: ignore[no-redef]
    import supervisor  # type: ignore[no-redef]


class _Spare:
    """A supervisor forked ahead of need, set up and waiting on a pipe for its task."""

    def __init__(self, cgroups: list[str]) -> None:
        read, write = os.pipe()
        # frozen objects are left alone by the collector, so the child's pages stay shared
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            os.close(write)
            _spare_main(read, cgroups)
        gc.unfreeze()
        os.close(read)
        self.pid = pid
        self.start = proctree.start_time(pid)
        self._write = write

    def hand(self, request: bytes) -> None:
        """Give the spare its task; from now on it is that task's supervisor."""
        try:
            view = memoryview(request)
            while view:
                view = view[os.write(self._write, view) :]
        finally:
            os.close(self._write)


def _spare_main(read: int, cgroups: list[str]) -> None:
    """The forked side: get ready, wait for a task, supervise it; never returns."""
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        supervisor.prepare(cgroups)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        if not chunks:  # the launcher is gone without a task for us
            limits.release()
            os._exit(0)
        request = json.loads(b"".join(chunks))
        supervisor.run(request["task_dir"], request["spec"], prepared=True)
    finally:
        os._exit(1)


def _check(line: bytes) -> bytes:
    request = json.loads(line)
    if not isinstance(request.get("task_dir"), str) or not isinstance(request.get("spec"), dict):
        raise ValueError("a launch request needs task_dir and spec")
    return line


def serve(cgroups: list[str]) -> None:
    """Answer launch requests until standard input closes.

    ``cgroups``: the folders that every task's cgroups go below (its limits need them), where
    each supervisor makes and joins its task's while it waits for the task.
    """
    supervisor.preload()
    # the supervisors are our children: let the kernel reap them as they end
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    spare: _Spare | None = _Spare(cgroups)
    for line in sys.stdin.buffer:
        reply: dict[str, Any]
        try:
            request = _check(line)
            current, spare = spare or _Spare(cgroups), None
            current.hand(request)
            reply = {"pid": current.pid, "start": current.start}
        except (OSError, ValueError, TypeError) as exc:
            reply = {"error": repr(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if spare is None:
            try:  # the next task's supervisor, forked while no request waits for it
                spare = _Spare(cgroups)
            except OSError:
                spare = None


if __name__ == "__main__":
    serve(sys.argv[1:])
