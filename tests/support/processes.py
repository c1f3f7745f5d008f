"""Real process trees for the supervisor and executor tests, and ways to watch them."""

from __future__ import annotations

import os
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


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from every one of its threads."""
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as handle:
            found.extend(int(p) for p in handle.read().split())
    return found


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still name a live process."""
    return [pid for pid in pids if proctree.start_time(pid) is not None]


def host_pid(reported: int, anchor: Path) -> int:
    """The pid this machine knows for a pid a task reported (from inside its pid namespace).

    ``anchor`` is the task's output folder: it is on the command line of the task's module,
    whose namespace is the one ``reported`` belongs to. Unsandboxed tasks' pids come back as
    they are; a pid that cannot be found any more comes back as -1 (never a live process).
    """
    # the module and bubblewrap both name the folder; only the module is in the namespace
    named = [(status, ns) for status, ns, cmdline in _processes() if bytes(anchor) in cmdline]
    inside = [ns for status, ns in named if len(_nspids(status)) > 1]
    if not inside:
        return reported if named else -1  # not in a namespace of its own: the machine's pids
    namespace = inside[0]
    for status, ns, _ in _processes():
        nspids = _nspids(status)
        if ns == namespace and nspids and nspids[-1] == reported:
            return nspids[0]
    return -1


def _processes() -> list[tuple[str, str, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                found.append((status, str((entry / "ns" / "pid").readlink()),
                              (entry / "cmdline").read_bytes()))  # fmt: skip
            except OSError:
                continue
    return found


def _nspids(status: str) -> list[int]:
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(pid) for pid in line.split()[1:]]
    return []


def naming(text: Path) -> list[str]:
    """Processes whose command line contains ``text`` (a task's output folder, say)."""
    return [f"{cmdline[:200]!r}" for _, _, cmdline in _processes() if bytes(text) in cmdline]
