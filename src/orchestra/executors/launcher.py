"""A pre-started process that forks one supervisor per task (standard library only).

Starting a fresh interpreter for every supervisor costs 30+ ms here (imports included);
forking this already-loaded process costs about one. The server writes one JSON line per
task (``{"task_dir": ...}``) to its standard input and reads back ``{"pid", "start"}``.
It exits when its standard input closes (the server stopped or died); the supervisors it
forked run in their own sessions and carry on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

if __package__:
    from orchestra.executors import proctree, supervisor
else:  # run by path with -I -S: the package is not importable, its sibling files are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proctree  # type: ignore[no-redef]
    import supervisor  # type: ignore[no-redef]


def _fork_supervisor(task_dir: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            supervisor.run(task_dir)
        finally:
            os._exit(1)
    return pid


def serve() -> None:
    """Answer launch requests until standard input closes."""
    supervisor.preload()
    # the supervisors are our children: let the kernel reap them as they end
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin.buffer:
        reply: dict[str, Any]
        try:
            task_dir = json.loads(line)["task_dir"]
            pid = _fork_supervisor(task_dir)
            reply = {"pid": pid, "start": proctree.start_time(pid)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": repr(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
