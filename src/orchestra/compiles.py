"""The background compiles of a generation's bytecode: started, awaited, stopped.

uv does not compile ``.pyc`` files, and compiling during the install would slow every
registration by seconds (pandas: ~2 s on a quiet machine, 10 s and more on a busy one).
Instead, once a generation is registered (or built on a worker), ``start_bytecode_compile``
compiles it in a detached background process at a lower priority; its pid is kept in the
generation folder so that removing the generation can stop it first. The compile goes
through the shared cache (``bytecode.py``): each package version is compiled once, and every
later environment gets the ``.pyc`` files through uv's links along with the sources, so a
fresh module's first run is as fast as its hundredth. A sandboxed task cannot write into its
generation, so this compile is the only one it gets.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra import bytecode
from orchestra.executors import proctree
from orchestra.process import clean_env
from orchestra.storage.files import InstallFolder, site_packages

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
COMPILE_PID_FILE = "compile.pid"
# the background compilations this process started, by pid, until they are reaped
_OWN_COMPILES: dict[int, subprocess.Popen[bytes]] = {}
_OWN_LOCK = threading.Lock()


def start_bytecode_compile(folder: InstallFolder, settings: Settings) -> int | None:
    """Compile a generation's bytecode in a detached background process (see bytecode.py)."""
    sites = site_packages(folder.env)
    if not sites:
        return None
    script = Path(bytecode.__file__)
    archives = settings.uv_cache_dir / "archive-v0"
    argv = [str(folder.python), "-I", str(script), str(sites[0]), str(archives), str(folder.code)]
    nice = shutil.which("nice")
    if nice:
        # below running tasks in priority: it must not slow down modules already serving
        argv = [nice, "-n", "10", *argv]
    try:
        proc = subprocess.Popen(
            argv, cwd=folder.root, env=clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        _LOGGER.warning("cannot start bytecode compilation in %s: %s", folder.root, exc)
        return None
    try:
        (folder.root / COMPILE_PID_FILE).write_text(str(proc.pid))
    except OSError:  # the generation was removed already: the compile sees it and ends
        pass
    with _OWN_LOCK:
        _OWN_COMPILES[proc.pid] = proc
    # reap it in this process when it ends, so no zombie stays behind in a long-lived server
    threading.Thread(target=_reap, args=(proc,), name=f"compile-{proc.pid}", daemon=True).start()
    return proc.pid


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    with _OWN_LOCK:
        _OWN_COMPILES.pop(proc.pid, None)


def stop_own_compiles(timeout: float = 5.0) -> int:
    """Stop the background compilations this process started (a server that stops); how many."""
    with _OWN_LOCK:
        procs = list(_OWN_COMPILES.values())
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: nice, python and workers
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _LOGGER.warning("bytecode compilation %s did not stop", proc.pid)
    return len(procs)


def bytecode_pending(generation: Path) -> bool:
    """Whether the background compilation of ``generation`` is still running."""
    try:
        pid = int((generation / COMPILE_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    return _is_compile_of(pid, generation)


def wait_for_bytecode(generation: Path, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until ``generation`` is compiled; True when it is."""
    deadline = time.monotonic() + timeout
    while bytecode_pending(generation):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_bytecode_compile(generation: Path, *, timeout: float = 5.0) -> None:
    """Stop the background compilation of ``generation`` if it is still running."""
    pid_file = generation / COMPILE_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _is_compile_of(pid, generation):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while _is_compile_of(pid, generation) and time.monotonic() < deadline:
        time.sleep(0.02)


def _is_compile_of(pid: int, generation: Path) -> bool:
    # the pid may have been reused since: it must have started before its pid file was written
    # (the command line is no proof: it changes while ``nice`` hands over to Python)
    try:
        written = (generation / COMPILE_PID_FILE).stat().st_mtime
    except OSError:
        return False
    return proctree.alive_since(pid, written)
