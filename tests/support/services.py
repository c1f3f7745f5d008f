"""What every real-service fixture shares: skip or fail when a program is missing, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

REQUIRE_ENV = "ORCHESTRA_TEST_REQUIRE_SERVICES"


def require_program(name: str, why: str) -> str:
    """The path of program ``name``; skip the test without it (fail where services are required)."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed: {why}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message + f" ({REQUIRE_ENV}=1)")
    pytest.skip(message)


def require_root(why: str) -> None:
    """Skip the test unless it runs as root (fail where services are required)."""
    if os.geteuid() == 0:
        return
    message = f"needs root: {why}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message + f" ({REQUIRE_ENV}=1)")
    pytest.skip(message)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_listening(
    host: str, port: int, *, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0
) -> None:
    """Wait until ``host:port`` accepts connections; fail at once if ``process`` ended."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}) before it listened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listened on {host}:{port} in {timeout} s") from None
            time.sleep(0.05)
