"""A real PostgreSQL server for the test run, and a fresh database on it for each test.

The server runs from the machine's PostgreSQL binaries in a temporary folder, on a free
127.0.0.1 port. PostgreSQL refuses to run as root, so as root the server (and initdb) run as
the user ``nobody``, in a folder that user owns. When the binaries are missing the tests that
need them are skipped, unless ``ORCHESTRA_TEST_REQUIRE_SERVICES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import free_port

USER = "orchestra"  # the database superuser initdb creates (trust authentication, loopback)
START_TIMEOUT = 60.0  # seconds the server may take to answer; the machine is shared
# durability costs time and a test server has nothing to keep
_FAST = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
_counter = itertools.count(1)


def require_service(name: str, reason: str) -> None:
    """Skip the test for a missing service, or fail when the run requires every service."""
    message = f"{name} is not available: {reason}"
    if os.environ.get("ORCHESTRA_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (ORCHESTRA_TEST_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def require_program(program: str, service: str, reason: str) -> str:
    """``program``'s path on PATH; skips (or fails in CI) without it."""
    found = shutil.which(program)
    if found is None:
        require_service(service, reason)
    assert found is not None
    return found


def find_binaries() -> Path | None:
    """The folder holding PostgreSQL's initdb and postgres: PATH, /usr/local/bin, Debian's."""
    candidates = [shutil.which("initdb"), "/usr/local/bin/initdb"]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            folder = Path(candidate).parent
            if os.access(folder / "postgres", os.X_OK):
                return folder
    return None


@dataclass
class PostgresServer:
    """A running PostgreSQL server; ``url(name)`` names one of its databases."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    _template: str = ""  # the database holding the current schema, made on first use
    password: str = ""  # the superuser's, when the server asks for one (scram-sha-256)
    user: str = USER  # the superuser

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        login = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql+psycopg://{login}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE / DROP DATABASE need that)."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        dsn += f" password={self.password}" if self.password else ""
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def new_database(self, template: str = "template0") -> str:
        """A new database, a copy of ``template`` (empty by default); its URL."""
        name = f"test_{os.getpid()}_{next(_counter)}"
        # a file copy is quicker than the default (WAL-logged) one for a small template
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def orchestra_database(self) -> str:
        """A new database already holding Orchestra's current schema (copied from a template)."""
        if not self._template:
            from orchestra.storage.db import Database

            url = self.new_database()
            database = Database(url)
            database.create_schema()
            database.dispose()  # a template must have no connection when it is copied
            self._template = url.rsplit("/", 1)[1]
        return self.new_database(self._template)

    def log(self) -> str:
        """What the server wrote to its log."""
        return (self.root / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove its folder."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that run a child as ``nobody`` when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _make_root() -> Path:
    # not below pytest's base folder: it is private to root, and nobody must reach its own
    root = Path(tempfile.mkdtemp(prefix="orchestra-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
    return root


def start_server(
    binaries: Path,
    password: str = "",
    listen: tuple[str, ...] = ("127.0.0.1",),
    superuser: str = USER,
) -> PostgresServer:
    """initdb into a temporary folder, start postgres on a free port, wait until it answers.

    With ``password``, every connection must give it (scram-sha-256), as in a deployment.
    """
    root = _make_root()
    user = _as_server_user()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    auth = ["--auth=trust"]
    if password:
        (root / "password").write_text(password + "\n")
        os.chmod(root / "password", 0o644)  # initdb runs as nobody
        auth = ["--auth=scram-sha-256", f"--pwfile={root / 'password'}"]
    initdb = [
        str(binaries / "initdb"), "-D", str(root / "data"), "-U", superuser, *auth,
        "-E", "UTF8", "--no-sync", "--no-instructions",
    ]  # fmt: skip
    done = subprocess.run(initdb, env=env, capture_output=True, cwd=root, check=False, **user)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')}")
    port = free_port()
    argv = [
        str(binaries / "postgres"), "-D", str(root / "data"), "-p", str(port),
        "-h", ",".join(listen), "-k", str(root), "-c", "max_connections=200", *_FAST,
    ]  # fmt: skip
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **user
        )
    server = PostgresServer(port, root, process, password=password, user=superuser)
    _wait_until_ready(server)
    return server


def _wait_until_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            log = server.log()
            server.stop()
            raise RuntimeError(f"postgres exited with {server.process.returncode}:\n{log}")
        try:
            server.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                log = server.log()
                server.stop()
                raise TimeoutError(
                    f"postgres did not answer in {START_TIMEOUT} s:\n{log}"
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (skipped, or failed in CI, without one)."""
    binaries = find_binaries()
    if binaries is None:
        require_service("PostgreSQL", "no initdb/postgres binaries found")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require_service("PostgreSQL", "psycopg is not installed (pip install orchestra[test])")
    assert binaries is not None
    server = start_server(binaries)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the run's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture
def orchestra_postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new database holding Orchestra's current schema, on the run's server."""
    return postgres_server.orchestra_database()
