"""A cluster on this machine: an API server, Redis, PostgreSQL and workers, none sharing a folder.

The API server and Redis listen on the bridge of a ``Network`` (and the test reaches them
there too); PostgreSQL, on loopback, is relayed onto the bridge. Each worker is a separate
``orchestra worker`` process in its own network namespace with its own data folder, so it
reaches the others only over its veth, as another machine would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.helpers import Answer, clean_environ, free_port, http, make_token, wait_for
from tests.support.netns import Forwarder, Namespace, Network
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer, redis_program
from tests.support.server import ApiCalls

TOKEN = "cluster-token"
LEASE = "5"  # seconds: short, so that lost workers are settled quickly


class ClusterWorker:
    """One ``orchestra worker`` process in its own namespace."""

    def __init__(self, name: str, namespace: Namespace, home: Path, env: dict[str, str]) -> None:
        self.name = name
        self.namespace = namespace
        self.home = home
        self.env = env
        self.log = home.parent / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, queues: str = "default", concurrency: int = 1) -> None:
        """Start the worker process (its readiness is the cluster's to check)."""
        argv = [
            sys.executable, "-m", "orchestra", "worker", "--name", self.name,
            "--queues", queues, "--concurrency", str(concurrency),
        ]  # fmt: skip
        self.process = self.namespace.popen(argv, env=self.env, log=self.log)

    def kill(self) -> None:
        """SIGKILL the worker process (its tasks end with it: their supervisors watch it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def text(self) -> str:
        """What the worker logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster(ApiCalls):
    """The API server process, Redis, the relayed database, and the workers."""

    def __init__(
        self, root: Path, network: Network, redis: RedisServer, postgres: PostgresServer
    ) -> None:
        self.root = root
        self.network = network
        self.redis = redis
        self.database = postgres.new_database()
        host = network.host_address
        self.relay = Forwarder((host, 0), ("127.0.0.1", postgres.port))
        self.url = f"http://{host}:{free_port()}"
        self.workers: list[ClusterWorker] = []
        self.api: subprocess.Popen[bytes] | None = None
        base = clean_environ()
        self.base_env = {
            **base, "PYTHONPATH": str(ROOT / "src"), "ORCHESTRA_API_TOKEN": TOKEN,
            "ORCHESTRA_WORKER_LEASE": LEASE, "ORCHESTRA_KILL_GRACE": "2",
        }  # fmt: skip
        self.worker_db = self.database.replace("127.0.0.1:", f"{host}:").replace(
            f":{postgres.port}/", f":{self.relay.port}/"
        )
        # workers hold a token with the worker role, never the admin one
        self.worker_token = make_token(self.database, "workers", "worker")

    def start_api(self) -> None:
        """``orchestra serve`` on the bridge, with the celery executor."""
        env = {
            **self.base_env, "ORCHESTRA_HOME": str(self.root / "api"),
            "ORCHESTRA_EXECUTOR": "celery", "ORCHESTRA_DATABASE_URL": self.database,
            "ORCHESTRA_BROKER_URL": self.redis.url("127.0.0.1"), "ORCHESTRA_POLL_INTERVAL": "0.2",
            "ORCHESTRA_UV_CACHE": str(self.root / "uv-cache"),
            "ORCHESTRA_HOST": self.network.host_address,
        }  # fmt: skip
        port = self.url.rsplit(":", 1)[1]
        with open(self.root / "api.log", "ab") as log:
            self.api = subprocess.Popen(
                [sys.executable, "-m", "orchestra", "serve", "--port", port],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self._api_answers, bool, timeout=60, what="the API server's /health")

    def _api_answers(self) -> bool:
        assert self.api is not None
        if self.api.poll() is not None:
            raise AssertionError("the API server exited:\n" + self.api_log())
        try:
            return self.call("GET", "/health", timeout=2).status == 200
        except OSError:
            return False

    def api_log(self) -> str:
        """What the API server logged."""
        return (self.root / "api.log").read_text(errors="replace")

    def add_worker(
        self, queues: str = "default", concurrency: int = 1, **settings: str
    ) -> ClusterWorker:
        """A new worker in a new namespace, started and announced in the database;
        ``settings`` as ORCHESTRA_* variables of its own."""
        index = len(self.workers)
        namespace = self.network.add()
        home = self.root / f"worker-{index}"
        host = self.network.host_address
        env = {
            **self.base_env, "ORCHESTRA_HOME": str(home), "ORCHESTRA_API_URL": self.url,
            "ORCHESTRA_BROKER_URL": self.redis.url(host), "ORCHESTRA_DATABASE_URL": self.worker_db,
            "ORCHESTRA_API_TOKEN": self.worker_token,
            **{f"ORCHESTRA_{k.upper()}": v for k, v in settings.items()},
        }  # fmt: skip
        worker = ClusterWorker(f"w{index}", namespace, home, env)
        self.workers.append(worker)
        worker.start(queues, concurrency)
        self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: ClusterWorker) -> None:
        """Wait until the worker consumes (Celery logs "ready")."""

        def ready() -> bool:
            assert worker.process is not None
            if worker.process.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited:\n{worker.text()}")
            return " ready." in worker.text()

        wait_for(ready, bool, timeout=90, what=f"worker {worker.name} to be ready")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Answer:
        """One JSON request to the API, with the token."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return http(method, self.url + path, json_body=body, timeout=timeout, headers=headers)

    def wait_status(self, task_id: int, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        """A task's record once its status is one of ``statuses``."""
        return dict(
            wait_for(
                lambda: self.task(task_id),
                lambda t: t["status"] in statuses,
                timeout=timeout,
                what=f"task {task_id}",
            )  # fmt: skip
        )

    def close(self) -> None:
        """Stop the workers and the API server, close the relay."""
        for worker in self.workers:
            worker.stop()
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        self.relay.close()


@contextmanager
def running_cluster(root: Path, postgres: PostgresServer) -> Iterator[Cluster]:
    """A started API server with its Redis and network, stopped and closed afterwards."""
    network = Network()
    redis = RedisServer(redis_program(), root / "redis", bind=("127.0.0.1", network.host_address))
    redis.start()
    made = Cluster(root, network, redis, postgres)
    try:
        made.start_api()
        yield made
    finally:
        made.close()
        redis.stop()
        network.close()
