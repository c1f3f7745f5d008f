"""The one door for short-lived child processes (git, uv): list argv, clean env, checked exit."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestra.errors import InstallError

_LOGGER = logging.getLogger(__name__)

# variables a child may inherit; everything else (tokens, proxies for secrets, PYTHON*,
# UV_*, GIT_*) is dropped so that user-controlled files cannot read or be steered by them
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child must not dlopen


def _die_with_parent() -> None:
    # an installer that outlives a killed server would keep writing into a generation folder
    # that recovery has removed; the kernel ends it when the thread that started it is gone
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a child process, plus ``extra``."""
    env = {k: os.environ[k] for k in _KEPT if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Completed:
    """What a finished child printed."""

    argv: tuple[str, ...]
    returncode: int
    output: str


def run_checked(
    argv: Sequence[str],
    *,
    step: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run ``argv`` (never through a shell); raise InstallError(step) on failure.

    Standard output and error are merged and streamed line by line to ``on_line`` (progress,
    install logs); the full text is returned and carried by the error.
    """
    _LOGGER.debug("running %s", argv)
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_die_with_parent,  # a single foreign call after fork, taking no lock
        )
    except OSError as exc:
        raise InstallError(step, f"cannot start {argv[0]}: {exc}") from exc
    output, timed_out = _collect(proc, timeout, on_line)
    if timed_out:
        raise InstallError(step, f"timed out after {timeout:g} s", log=output)
    if proc.returncode != 0:
        raise InstallError(step, tail(output) or f"exit status {proc.returncode}", log=output)
    return Completed(tuple(argv), proc.returncode, output)


def _collect(
    proc: subprocess.Popen[str], timeout: float, on_line: Callable[[str], None] | None
) -> tuple[str, bool]:
    # read to the end and wait without a timeout: Popen.wait(timeout) polls with sleeps,
    # which added up to 50 ms to every uv and git step; a timer enforces the limit instead
    expired = threading.Event()

    def _expire() -> None:
        expired.set()
        # the child runs in its own session: take its helpers (git-remote-*, builds) too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, _expire)
    timer.daemon = True
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    return "".join(lines), expired.is_set()


def tail(output: str, lines: int = 15) -> str:
    """The last lines of ``output``, where installers put the reason."""
    return "\n".join(output.strip().splitlines()[-lines:])
