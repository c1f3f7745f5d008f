"""A real redis-server on a free port in a temporary folder, restartable (the broker's tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import free_port, wait_for_port
from tests.support.postgres import require_program


class RedisServer:
    """One redis-server process: no persistence, so a restart forgets every message."""

    def __init__(
        self,
        program: str,
        folder: Path,
        *,
        bind: tuple[str, ...] = ("127.0.0.1",),
        password: str = "",
    ) -> None:
        # 127.0.0.1 first: that is where the fixture waits for it to answer
        self.program = program
        self.folder = folder
        self.bind = bind
        self.password = password  # requirepass, as a deployment sets it
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str | None = None, db: int = 0) -> str:
        """The redis:// URL through ``host`` (the first bound address by default)."""
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}{host or self.bind[0]}:{self.port}/{db}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            self.program, "--port", str(self.port), "--bind", *self.bind,
            "--dir", str(self.folder), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process, timeout=30)

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: whatever it held is lost)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    def restart(self) -> None:
        """Kill the server and start a fresh one on the same port: every message is gone."""
        self.stop()
        self.start()

    def bind_also(self, address: str) -> None:
        """Listen on ``address`` too (from the next start)."""
        if address not in self.bind:
            self.bind = (*self.bind, address)


def redis_program() -> str:
    """redis-server's path; skips (or fails in CI) without it."""
    return require_program("redis-server", "Redis", "redis-server is not installed")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free 127.0.0.1 port, stopped after the test."""
    server = RedisServer(redis_program(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
