"""Real process trees for the supervisor and executor tests, and ways to watch them."""

from __future__ import annotations

import time
from pathlib import Path

from orchestra.executors import proctree

# a module that starts a child, whose own child calls setsid(); it writes the three pids
TREE = """
import json, os, subprocess, sys, time
grandchild = "import os, time; os.setsid(); time.sleep(600)"
child = (
    "import subprocess, sys, time;"
    f"g = subprocess.Popen([sys.executable, '-c', {grandchild!r}]);"
    "print(g.pid, flush=True); time.sleep(600)"
)
proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
pids = [os.getpid(), proc.pid, int(proc.stdout.readline())]
with open(sys.argv[1] + ".tmp", "w") as handle:
    json.dump(pids, handle)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
signal_name = sys.argv[2] if len(sys.argv) > 2 else ""
if signal_name == "ignore-term":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


def wait_for_file(path: Path, timeout: float = 20.0) -> None:
    """Wait until ``path`` exists; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still name a live process."""
    return [pid for pid in pids if proctree.start_time(pid) is not None]
