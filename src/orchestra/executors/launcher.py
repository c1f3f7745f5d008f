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

Warm starts (``warm.py``) add two requests. ``{"prepare": {"spare_dir", "spec"}}`` forks a
supervisor that starts a spare interpreter in its sandbox at once (``warmstart.py``) and keeps
it until a task comes: a launch request that names it (``"spare": pid``) is handed to it
rather than to the plain supervisor, which takes the task when the spare is gone (``"warm":
false`` in the answer). ``{"drop": pid}`` lets one go (the end of its pipe).
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
    from orchestra.executors import limits, proctree, supervisor, warmstart
else:  # run by path with -I -S: the package is not importable, its sibling files are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limits  # type: ignore[no-redef]
    import proctree  # type: ignore[no-redef]
    import supervisor  # type: ignore[no-redef]
    import warmstart  # type: ignore[no-redef]


# the writing ends of the pipes to the supervisors waiting for a task: each forked one closes
# the others' copies, or a pipe would not end when the launcher closes it
_WRITE_ENDS: set[int] = set()


class _Forked:
    """A supervisor forked ahead of need, set up and waiting on a pipe for its task (with a
    spare interpreter already started, for a warm start, when ``spare`` says which)."""

    def __init__(self, cgroups: list[str], spare: dict[str, Any] | None = None) -> None:
        read, write = os.pipe()
        # frozen objects are left alone by the collector, so the child's pages stay shared
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            for fd in (write, *_WRITE_ENDS):
                os.close(fd)
            _forked_main(read, cgroups, spare)
        gc.unfreeze()
        os.close(read)
        _WRITE_ENDS.add(write)
        self.pid = pid
        self.start = proctree.start_time(pid)
        self._write = write

    def hand(self, request: bytes) -> None:
        """Give it its task; from now on it is that task's supervisor."""
        try:
            view = memoryview(request)
            while view:
                view = view[os.write(self._write, view) :]
        finally:
            self.drop()

    def drop(self) -> None:
        """Close our end of its pipe (without a task: it sees the end and goes)."""
        _WRITE_ENDS.discard(self._write)
        os.close(self._write)


def _forked_main(read: int, cgroups: list[str], spare: dict[str, Any] | None) -> None:
    """The forked side: get ready, wait for a task, supervise it; never returns."""
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        supervisor.prepare(cgroups)
        if spare is not None:
            warmstart.serve(spare, read)
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


def _check(request: Any) -> dict[str, Any]:
    if not isinstance(request.get("task_dir"), str) or not isinstance(request.get("spec"), dict):
        raise ValueError("a launch request needs task_dir and spec")
    return dict(request)


class _Launcher:
    """The forked supervisors: the plain one ahead of need, and those with a spare interpreter."""

    def __init__(self, cgroups: list[str]) -> None:
        self.cgroups = cgroups
        self.plain: _Forked | None = _Forked(cgroups)
        self.spares: dict[int, _Forked] = {}

    def answer(self, line: bytes) -> dict[str, Any]:
        """What a request asks done, and its answer."""
        request = json.loads(line)
        if "prepare" in request:
            spare = _Forked(self.cgroups, dict(request["prepare"]))
            self.spares[spare.pid] = spare
            return {"pid": spare.pid, "start": spare.start}
        if "drop" in request:
            dropped = self.spares.pop(int(request["drop"]), None)
            if dropped is not None:
                dropped.drop()
            return {}
        return self._launch(_check(request), line)

    def _launch(self, request: dict[str, Any], line: bytes) -> dict[str, Any]:
        """Hand ``line`` (``request`` as it came) to its spare, or to the plain supervisor."""
        spare = self.spares.pop(int(request["spec"].get("spare") or 0), None)
        if spare is not None:
            try:
                spare.hand(line)
                return {"pid": spare.pid, "start": spare.start, "warm": True}
            except OSError:
                pass  # its interpreter is gone, and so is it: the plain supervisor takes it
        current, self.plain = self.plain or _Forked(self.cgroups), None
        current.hand(line)
        return {"pid": current.pid, "start": current.start, "warm": False}

    def next_plain(self) -> None:
        """Fork the next task's supervisor, while no request waits for it."""
        if self.plain is None:
            try:
                self.plain = _Forked(self.cgroups)
            except OSError:
                self.plain = None


def serve(cgroups: list[str]) -> None:
    """Answer launch requests until standard input closes.

    ``cgroups``: the folders that every task's cgroups go below (its limits need them), where
    each supervisor makes and joins its task's while it waits for the task.
    """
    supervisor.preload()
    # the supervisors are our children: let the kernel reap them as they end
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    launcher = _Launcher(cgroups)
    for line in sys.stdin.buffer:
        reply: dict[str, Any]
        try:
            reply = launcher.answer(line)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            reply = {"error": repr(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        launcher.next_plain()


if __name__ == "__main__":
    serve(sys.argv[1:])
