"""``serve`` and ``worker`` facing a database or broker that refuses them: one line, one code.

Real services: a PostgreSQL server that asks for a password (scram-sha-256), the same
server's port once nothing listens there, and a Redis server with ``requirepass``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import clean_environ, free_port
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer, find_binaries, require_service, start_server
from tests.support.redis import RedisServer, redis_program

PASSWORD = "pg-s3cret"
BAD_SETTINGS, UNREACHABLE = 2, 7  # the exit codes docs/several-machines.md documents


@pytest.fixture(scope="module")
def guarded_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server that takes only the right password."""
    binaries = find_binaries()
    if binaries is None:
        require_service("PostgreSQL", "no initdb/postgres binaries found")
    assert binaries is not None
    server = start_server(binaries, password=PASSWORD)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server with requirepass."""
    server = RedisServer(redis_program(), tmp_path_factory.mktemp("redis"), password="r3dis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _start(command: str, home: Path, **settings: str) -> tuple[int, list[str]]:
    env = {**clean_environ(), "PYTHONPATH": str(ROOT / "src"), "ORCHESTRA_HOME": str(home)}
    env.update({f"ORCHESTRA_{k.upper()}": v for k, v in settings.items()})
    argv = [sys.executable, "-m", "orchestra", command]
    argv += ["--port", str(free_port())] if command == "serve" else ["--name", "w1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr.splitlines()


def _celery(postgres: PostgresServer, broker: str, database: str = "") -> dict[str, str]:
    return {
        "executor": "celery", "broker_url": broker, "api_url": "http://127.0.0.1:9",
        "database_url": database or postgres.url("postgres"), "api_token": "t",
    }  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_database_refusing_the_password_is_one_line_and_exit_2(
    command: str, tmp_path: Path, guarded_postgres: PostgresServer, guarded_redis: RedisServer
) -> None:
    wrong = guarded_postgres.url("postgres").replace(PASSWORD, "not-it")
    settings = _celery(guarded_postgres, guarded_redis.url(), wrong)
    code, lines = _start(command, tmp_path, **settings)
    assert code == BAD_SETTINGS, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("orchestra: error: the database postgresql+psycopg://orchestra:***@")
    assert "refuses this login: " in lines[0] and "password authentication failed" in lines[0]
    assert "not-it" not in lines[0]
    without = guarded_postgres.url("postgres").replace(f":{PASSWORD}", "")
    settings = _celery(guarded_postgres, guarded_redis.url(), without)
    code, lines = _start(command, tmp_path, **settings)
    assert (code, len(lines)) == (BAD_SETTINGS, 1) and "no password supplied" in lines[0]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_database_that_is_down_is_one_line_and_exit_7(
    command: str, tmp_path: Path, guarded_postgres: PostgresServer, guarded_redis: RedisServer
) -> None:
    url = guarded_postgres.url("postgres")
    down = url.replace(f":{guarded_postgres.port}/", f":{free_port()}/")
    code, lines = _start(command, tmp_path, **_celery(guarded_postgres, guarded_redis.url(), down))
    assert code == UNREACHABLE, lines
    assert len(lines) == 1 and lines[0].startswith("orchestra: error: cannot reach the database")
    assert "Connection refused" in lines[0] and PASSWORD not in lines[0]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_broker_wanting_a_password_not_given_is_one_line_and_exit_2(
    command: str, tmp_path: Path, guarded_postgres: PostgresServer, guarded_redis: RedisServer
) -> None:
    without = guarded_redis.url().replace(":r3dis@", "")
    code, lines = _start(command, tmp_path, **_celery(guarded_postgres, without))
    assert code == BAD_SETTINGS, lines
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"orchestra: error: the broker {without} refuses this login: Authentication required. "
        "(give its password in ORCHESTRA_BROKER_URL: redis://:PASSWORD@host:6379/0)"
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_broker_that_is_down_is_one_line_and_exit_7(
    command: str, tmp_path: Path, guarded_postgres: PostgresServer
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    code, lines = _start(command, tmp_path, **_celery(guarded_postgres, down))
    assert (code, len(lines)) == (UNREACHABLE, 1), lines
    assert lines[0].startswith(f"orchestra: error: cannot reach the broker {down}: ")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(
    command: str, tmp_path: Path
) -> None:
    code, lines = _start(command, tmp_path, worker_lease="-5")
    assert code == BAD_SETTINGS
    assert lines == [
        "orchestra: error: ORCHESTRA_WORKER_LEASE=-5 is refused: "
        "worker_lease must be a number of seconds of at least 1"
    ]
