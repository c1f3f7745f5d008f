"""docs/several-machines.md, run as written: its marked blocks, in order, on real services.

PostgreSQL asks for passwords (scram-sha-256) and lets in only what the page's
``pg_hba.conf`` line allows; Redis runs with the page's ``requirepass``; the API server
listens on a bridge; each worker runs in its own network namespace with its own data
folder and config file. The page's addresses, ports and paths are replaced with the
test's, and ``sudo -u USER`` runs the command as the test's own user (a shim on PATH).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.helpers import clean_environ, free_port, http, wait_for, wait_for_port
from tests.support.markdown import Step, steps
from tests.support.netns import Namespace, Network, require_namespaces
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer, find_binaries, require_service, start_server
from tests.support.redis import redis_program

pytestmark = pytest.mark.slow

PAGE = ROOT / "docs" / "several-machines.md"
BIN = Path(sys.executable).parent
SUPERUSER_PASSWORD = "postgres-admin-secret"
# `sudo -u USER COMMAND`: the test runs as one user, so COMMAND runs as that one
SUDO = '#!/bin/sh\n[ "$1" = "-u" ] && shift 2\nexec "$@"\n'
WORKERS = ("box-1", "box-2")


@dataclass
class Deployment:
    """The page's machines on this one: where each keeps its files, and what runs."""

    root: Path
    network: Network
    postgres: PostgresServer
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    def localize(self, text: str, machine: str) -> str:
        """The page's addresses, ports and paths as this test has them, for ``machine``."""
        host = self.network.host_address
        pairs = [
            ("10.0.0.0/24", str(self.network.subnet)), ("10.0.0.5", host), ("10.0.0.6", host),
            ("5432", str(self.postgres.port)), ("6379", str(self.redis_port)),
            ("8470", str(self.api_port)),
            ("/etc/postgresql/15/main/pg_hba.conf", str(self.postgres.root / "data/pg_hba.conf")),
            ("/etc/redis/redis.conf", str(self.redis_conf)),
            ("/etc/orchestra/config.toml", str(self.config(machine))),
            ("/var/lib/orchestra-worker/1", str(self.root / machine / "data")),
            ("/var/lib/orchestra", str(self.root / "api" / "data")),
            ("/opt/orchestra/bin/", f"{BIN}/"), ("box-1", machine),
        ]  # fmt: skip
        for page, here in pairs:
            text = text.replace(page, here)
        return text

    @property
    def redis_conf(self) -> Path:
        """The Redis server's configuration file."""
        return self.root / "db" / "redis.conf"

    def config(self, machine: str) -> Path:
        """Where ``machine``'s /etc/orchestra/config.toml is."""
        return self.root / machine / "etc" / "config.toml"

    def env(self, machine: str) -> dict[str, str]:
        """The environment of a terminal on ``machine``."""
        binaries = find_binaries()
        path = f"{self.root / 'bin'}:{BIN}:{binaries}:{clean_environ().get('PATH', '')}"
        env = {**clean_environ(), "PATH": path, "HOME": str(self.root / machine)}
        if machine == "db":  # PostgreSQL's administrator, as `sudo -u postgres` would be
            env.update(PGHOST="127.0.0.1", PGPORT=str(self.postgres.port), PGUSER="postgres",
                       PGPASSWORD=SUPERUSER_PASSWORD)  # fmt: skip
        else:  # the machine's /etc/orchestra/config.toml
            env["ORCHESTRA_CONFIG"] = str(self.config(machine))
        return env

    def machines(self, step: Step) -> list[str]:
        """The machines a step is done on: each worker for a worker's step."""
        return list(WORKERS) if step.machine == "worker" else [step.machine]

    def do(self, step: Step) -> None:
        """One step of the page, on each machine it is for."""
        for machine in self.machines(step):
            text = self.localize(step.text, machine)
            if step.kind in ("file", "append"):
                target = Path(self.localize(step.title, machine))
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("w" if step.kind == "file" else "a") as handle:
                    handle.write(text)
                if target == self.redis_conf:
                    self.start_redis()  # the page restarts it after the change
            elif step.kind == "run":
                self.run(text, machine)
            else:
                self.serve(text, machine)

    def run(self, text: str, machine: str) -> None:
        """A block of commands on ``machine``; it must succeed."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text], cwd=ROOT, env=self.env(machine),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{text}\nexit {done.returncode}:\n{done.stdout}{done.stderr}"
        self.outputs.append(done.stdout)

    def serve(self, text: str, machine: str) -> None:
        """Start the block's program on ``machine``, and wait until it is ready."""
        log = self.root / f"{machine}.log"
        if machine == "api":
            with log.open("ab") as out:
                process = subprocess.Popen(
                    ["bash", "-c", text], cwd=ROOT, env=self.env(machine),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            self.processes.append(process)
            wait_for(lambda: self._answers(process, log), bool, timeout=120,
                     what="the API server to answer")  # fmt: skip
            return
        namespace = self.namespaces.setdefault(machine, self.network.add())
        process = namespace.popen(["bash", "-c", text], env=self.env(machine), log=log)
        self.processes.append(process)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{machine} exited:\n{log.read_text(errors='replace')}")
            return " ready." in log.read_text(errors="replace")

        wait_for(ready, bool, timeout=120, what=f"the worker on {machine} to be ready")

    def _answers(self, process: subprocess.Popen[bytes], log: Path) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the API server exited:\n{log.read_text(errors='replace')}")
        try:
            return http("GET", f"{self.api_url}/health", timeout=2).status == 200
        except OSError:
            return False

    @property
    def api_url(self) -> str:
        """Where the API server listens, as the workers reach it."""
        return f"http://{self.network.host_address}:{self.api_port}"

    def start_redis(self) -> None:
        """Start Redis from its configuration file (again, if it ran)."""
        self.stop_redis()
        process = subprocess.Popen([redis_program(), str(self.redis_conf)],
                                   stdin=subprocess.DEVNULL)  # fmt: skip
        self.redis = process
        wait_for_port(self.redis_port, process=process, timeout=30)

    def stop_redis(self) -> None:
        """Stop Redis if it runs."""
        process = self.redis
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    def close(self) -> None:
        """Stop every program, the workers first, then the services."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.stop_redis()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """The bridge, PostgreSQL listening on it, and the files the page starts from."""
    require_namespaces()
    binaries = find_binaries()
    if binaries is None:
        require_service("PostgreSQL", "no initdb/postgres binaries found")
    assert binaries is not None
    network = Network()
    postgres: PostgresServer | None = None
    made: Deployment | None = None
    try:
        postgres = start_server(
            binaries, password=SUPERUSER_PASSWORD, superuser="postgres",
            listen=("127.0.0.1", network.host_address),
        )  # fmt: skip
        made = Deployment(tmp_path, network, postgres)
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "sudo").write_text(SUDO)
        (tmp_path / "bin" / "sudo").chmod(0o755)
        made.redis_conf.parent.mkdir(parents=True)
        # what Debian's redis.conf holds besides the page's lines, for a throw-away server
        made.redis_conf.write_text(
            f'port {made.redis_port}\ndir {made.redis_conf.parent}\nsave ""\n'
            "appendonly no\ndaemonize no\nloglevel warning\n"
            f"logfile {made.redis_conf.parent / 'redis.log'}\n"
        )
        yield made
    finally:
        if made is not None:
            made.close()
        if postgres is not None:
            postgres.stop()
        network.close()


def test_the_several_machines_page_runs_as_written(deployment: Deployment) -> None:
    marked = steps(PAGE)
    assert [s.machine for s in marked if s.kind == "serve"] == ["api", "worker"]
    for step in marked:
        deployment.do(step)
    registered = next(out for out in deployment.outputs if out.startswith("registered"))
    ran = deployment.outputs[-1]
    host, port = deployment.network.host_address, deployment.postgres.port
    where = f"{deployment.root / 'api' / 'data'} (PostgreSQL orchestra@{host}:{port}/orchestra)"
    assert registered == f"registered module 1 into {where}: Example catalog (installed)\n"
    first = json.loads(ran.splitlines()[0])["task"]
    worker = re.search(r"^worker: +(\S+)$", ran, re.MULTILINE)
    assert "status:    done" in ran and worker is not None and worker.group(1) in WORKERS
    record = http("GET", f"{deployment.api_url}/task/{first}?wait=60", timeout=90).json()
    assert record["status"] == "done" and record["worker"] in WORKERS
    for machine in WORKERS:  # the page's sandbox = "required" held
        assert "task sandbox: on" in (deployment.root / f"{machine}.log").read_text()


def test_the_pages_services_refuse_what_its_lines_do_not_allow(deployment: Deployment) -> None:
    """The password lines are what lets the machines in: without them, nothing gets in."""
    import psycopg
    import redis

    for step in steps(PAGE)[:4]:  # PostgreSQL's and Redis's steps, on db-host
        deployment.do(step)
    host = deployment.network.host_address
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=host, port=deployment.redis_port).ping()
    assert redis.Redis(host=host, port=deployment.redis_port, password="REDIS_PASSWORD").ping()
    dsn = f"host={host} port={deployment.postgres.port} user=orchestra dbname=orchestra"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"{dsn} password=wrong", connect_timeout=10).close()
    psycopg.connect(f"{dsn} password=DB_PASSWORD", connect_timeout=10).close()
    # the superuser comes in from the bridge by no line of the page's
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(
            f"host={host} port={deployment.postgres.port} user=postgres dbname=postgres "
            f"password={SUPERUSER_PASSWORD}", connect_timeout=10,
        ).close()  # fmt: skip
