"""Orchestra as a user drives it: the CLI and a real server, over subprocess and HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import ROOT, BenchError, run, user_env

if TYPE_CHECKING:
    from context import Context

    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
COMPILE_PID_FILE = "compile.pid"  # where the registry notes its background compile


def orchestra_env(home: Path, uv_cache: Path, **settings: str) -> dict[str, str]:
    """The user's environment with a data folder, an installer cache and other settings."""
    extra = {f"ORCHESTRA_{k.upper()}": v for k, v in settings.items()}
    return user_env(ORCHESTRA_HOME=str(home), ORCHESTRA_UV_CACHE=str(uv_cache), **extra)


def cli(*args: str, env: Mapping[str, str], timeout: float = 900.0) -> str:
    """Run ``python -m orchestra ARGS`` and return what it printed."""
    return run([sys.executable, "-m", "orchestra", *args], env=env, timeout=timeout).stdout


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def says_ready(log: Path) -> bool:
    """Whether a Celery worker's log says it consumes."""
    return " ready." in log.read_text(errors="replace")


def wait_while_running(
    check: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    failure: str,
    timeout: float = 120.0,
) -> None:
    """Wait until ``check()``; BenchError saying ``failure`` and the end of ``log`` when
    ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{failure}: {log.read_text(errors='replace')[-1500:]}")
        time.sleep(0.02)


class Client:
    """A keep-alive JSON client, so connection set-up is not what gets measured."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.server_seconds: float | None = None  # the last answer's Server-Timing, if any

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request and return (status, decoded JSON body)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                self.server_seconds = _server_seconds(response.getheader("Server-Timing"))
                break
            except (ConnectionError, http.client.HTTPException):
                # the server may close an idle keep-alive connection: reconnect once
                self._conn.close()
                if attempt == 2:
                    raise
        return response.status, json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """GET ``path``; BenchError unless it answers 200."""
        return self._expect("GET", path, None, 200)

    def post(self, path: str, body: Any = None) -> Any:
        """POST ``path``; BenchError unless it answers 2xx."""
        return self._expect("POST", path, body, 202)

    def _expect(self, method: str, path: str, body: Any, status: int) -> Any:
        code, data = self.request(method, path, body)
        if code // 100 != status // 100:
            raise BenchError(f"{method} {path} answered {code}: {data}")
        return data

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _server_seconds(timing: str | None) -> float | None:
    """The ``app;dur=MS`` of a Server-Timing header, in seconds."""
    for part in (timing or "").split(";"):
        if part.strip().startswith("dur="):
            return float(part.strip()[4:]) / 1000
    return None


class Server:
    """``python -m orchestra serve`` in a subprocess on a free loopback port."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = dict(env)
        self.home = Path(env["ORCHESTRA_HOME"])
        self._log = log_path.open("ab")
        argv = [sys.executable, "-m", "orchestra", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            argv, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.client = Client(self.port)
        self._wait_healthy(log_path)

    def _wait_healthy(self, log_path: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited: {log_path.read_text()[-1500:]}")
            try:
                if self.client.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                self.client.close()
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"server did not answer /health within {timeout:g} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        """The server process's resident memory (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS for the server")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a client does -------------------------------------------------------------

    def register(self, source: Path, *, settle: bool = True, timeout: float = 600.0) -> int:
        """POST /modules and poll until the module is installed; its id.

        With ``settle``, also wait for the background bytecode compile to end, so that the
        next measurement starts on a quiet machine.
        """
        module_id = int(self.client.post("/modules", {"source": str(source)})["id"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.client.get(f"/module/{module_id}")
            if info["status"] == "installed":
                if settle:
                    wait_background_compile(self.home)
                return module_id
            if info["status"] == "error":
                raise BenchError(f"registration failed: {info.get('error')}")
            time.sleep(0.02)
        raise BenchError(f"module {module_id} not installed after {timeout:g} s")

    def submit(self, module_id: int, args: Mapping[str, str] | None = None) -> int:
        """POST /module/<id>/run; the task id."""
        query = "?" + urllib.parse.urlencode(args) if args else ""
        return int(self.client.post(f"/module/{module_id}/run{query}")["task"])

    def wait(self, task_id: int, timeout: float = 120.0) -> dict[str, Any]:
        """GET /task/<id>?wait=…; BenchError unless the task ends ``done``."""
        task: dict[str, Any] = self.client.get(f"/task/{task_id}?wait={timeout:g}")
        if task["status"] != "done":
            raise BenchError(f"task {task_id} ended {task['status']}: {task.get('error')}")
        return task

    def warm_up(self, module_id: int, args: Mapping[str, str] | None = None) -> int:
        """Run tasks until one starts warm (ORCHESTRA_WARM=1); how many it took."""
        for count in range(1, 61):
            if self.wait(self.submit(module_id, args)).get("start") == "warm":
                return count
            time.sleep(0.1)
        raise BenchError(f"no task of module {module_id} started warm")

    def poll(self, task_id: int, interval: float = 0.05, timeout: float = 120.0) -> None:
        """GET /task/<id> every ``interval`` until it is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get(f"/task/{task_id}")["status"]
            if status == "done":
                return
            if status in ("error", "killed"):
                raise BenchError(f"task {task_id} ended {status}")
            time.sleep(interval)
        raise BenchError(f"task {task_id} not done after {timeout:g} s")


class Cluster:
    """A celery API server on a fresh database and its workers, all on this machine."""

    def __init__(self, ctx: Context, root: Path, postgres: object, broker: object) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.database = postgres.new_database()  # type: ignore[attr-defined]
        self.broker = broker.url()  # type: ignore[attr-defined]
        common = {"database_url": self.database, "broker_url": self.broker}
        self.server = Server(
            orchestra_env(root / "api", ctx.uv_cache, executor="celery", **common),
            root / "api.log",
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_env = orchestra_env(
            root / "w", ctx.uv_cache, api_url=f"http://127.0.0.1:{self.server.port}", **common
        )

    def add_workers(self, count: int, concurrency: int = 1) -> None:
        """Start ``count`` more workers and wait until each consumes."""
        for _ in range(count):
            index = len(self.workers)
            env = {**self.worker_env, "ORCHESTRA_HOME": str(self.root / f"worker-{index}")}
            argv = [sys.executable, "-m", "orchestra", "worker", "--name", f"b{index}",
                    "--concurrency", str(concurrency)]  # fmt: skip
            with open(self.root / f"b{index}.log", "ab") as log:
                self.workers.append(
                    subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
        for index in range(len(self.workers)):
            self._wait_ready(index)

    def _wait_ready(self, index: int) -> None:
        log = self.root / f"b{index}.log"
        wait_while_running(
            lambda: says_ready(log), self.workers[index], log, f"worker b{index} did not start"
        )

    def runs_per_task(self) -> Counter[int]:
        """How many times the workers' logs say each task ended."""
        found: Counter[int] = Counter()
        for index in range(len(self.workers)):
            text = (self.root / f"b{index}.log").read_text(errors="replace")
            found.update(int(n) for n in re.findall(r"task (\d+) ended", text))
        return found

    def close(self) -> None:
        """Stop the workers, then the server."""
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.server.stop()


# -- the data folder --------------------------------------------------------------------------


def generations(home: Path) -> list[Path]:
    """Installed module generations under the data folder, oldest first."""
    folders = [p for p in (home / "installs").iterdir() if (p / "env").is_dir()]
    return sorted(folders, key=lambda p: p.stat().st_mtime)


def wait_background_compile(home: Path, timeout: float = 600.0) -> float:
    """Wait until no generation under ``home`` is compiling its bytecode; seconds waited.

    The registry leaves the compiling process's pid in ``installs/<gen>/compile.pid``.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not any(_compiling(gen) for gen in (home / "installs").glob("*")):
            return time.monotonic() - start
        time.sleep(0.05)
    raise BenchError(f"bytecode compile under {home} still running after {timeout:g} s")


def _compiling(generation: Path) -> bool:
    try:
        pid = int((generation / COMPILE_PID_FILE).read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False  # no compile started, or it has ended
    # a recycled pid would not name this generation
    return state != "Z" and str(generation).encode() in cmdline


@contextmanager
def home_database(home: Path) -> Iterator[Database]:
    """The SQLite database of a stopped server's data folder, to fill it directly."""
    from orchestra.storage.db import Database

    db = Database(f"sqlite:///{home / 'orchestra.db'}")
    try:
        yield db
    finally:
        db.dispose()


@contextmanager
def celery_services(scratch: Path) -> Iterator[tuple[Any, Any]]:
    """A real PostgreSQL and Redis (the test suite's fixtures) for a Celery cluster."""
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import find_binaries, start_server
    from tests.support.redis import RedisServer

    binaries, redis = find_binaries(), shutil.which("redis-server")
    if binaries is None or redis is None:
        raise BenchError("a Celery benchmark needs PostgreSQL's binaries and redis-server")
    postgres = start_server(binaries)
    broker = RedisServer(redis, scratch / "redis")
    broker.start()
    try:
        yield postgres, broker
    finally:
        broker.stop()
        postgres.stop()


@contextmanager
def one_worker(ctx: Context, name: str) -> Iterator[Server]:
    """A Celery API server with one worker, on a PostgreSQL and Redis of their own."""
    with celery_services(ctx.folder(f"{name}-services")) as (postgres, broker):
        cluster = Cluster(ctx, ctx.folder(f"{name}-cluster") / "cluster", postgres, broker)
        try:
            cluster.add_workers(1)
            yield cluster.server
        finally:
            cluster.close()
