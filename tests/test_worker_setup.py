"""What a worker and a celery API server check before they start; messages and settings."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestra.config import Settings
from orchestra.distributed.main import database_url
from orchestra.distributed.names import message_id, task_of_message
from orchestra.errors import InvalidMetadata
from orchestra.manifest import parse_manifest
from orchestra.storage.db import Database
from orchestra.tasks import workers
from tests.support.helpers import clean_environ, free_port, http, make_token, run_cli, wait_for
from tests.support.paths import DATA
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess

BASE = {
    "name": "m", "description": "d", "args": [], "output": {"type": "image"},
    "install": {"executable": "m", "files": ["m"]},
}  # fmt: skip


def test_a_worker_without_its_settings_names_each_missing_one(settings: Settings) -> None:
    code, _out, err = run_cli(["worker"], settings)
    assert code == 2
    for name in ("ORCHESTRA_BROKER_URL", "ORCHESTRA_API_URL", "ORCHESTRA_DATABASE_URL"):
        assert name in err
    assert "Traceback" not in err


def test_a_worker_refuses_a_sqlite_database(settings: Settings) -> None:
    local = settings.with_overrides(
        broker_url="redis://127.0.0.1:1/0", api_url="http://127.0.0.1:1",
        database_url=f"sqlite:///{settings.home / 'x.db'}",
    )  # fmt: skip
    code, _out, err = run_cli(["worker"], local)
    assert code == 2 and "PostgreSQL" in err


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({}, ["ORCHESTRA_BROKER_URL", "ORCHESTRA_DATABASE_URL"]),
        ({"ORCHESTRA_BROKER_URL": "redis://127.0.0.1:1/0"}, ["ORCHESTRA_DATABASE_URL"]),
        (
            {"ORCHESTRA_BROKER_URL": "redis://127.0.0.1:1/0",
             "ORCHESTRA_DATABASE_URL": "sqlite:///{home}/shared.db"},
            ["ORCHESTRA_DATABASE_URL", "not SQLite"],
        ),
    ],
)  # fmt: skip
def test_a_celery_api_server_refuses_to_start_without_a_broker_and_a_shared_database(
    tmp_path: Path, given: dict[str, str], named: list[str]
) -> None:
    """Without them no worker could ever take its tasks: they would wait queued for ever."""
    env = clean_environ()
    env.update({k: v.format(home=tmp_path) for k, v in given.items()})
    env.update(ORCHESTRA_HOME=str(tmp_path / "home"), ORCHESTRA_EXECUTOR="celery")
    argv = [sys.executable, "-m", "orchestra", "serve", "--port", str(free_port())]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert all(name in done.stderr for name in named), done.stderr
    assert "Traceback" not in done.stderr and "serving on" not in done.stderr


@pytest.mark.parametrize("queues", ["", ",", " , "])
def test_a_worker_needs_a_queue_name(settings: Settings, queues: str) -> None:
    code, _out, err = run_cli(["worker", "--queues", queues], settings)
    assert code == 2 and "queue" in err


def test_a_worker_reaches_postgresql_with_network_timeouts() -> None:
    url = database_url("postgresql+psycopg://u:p%40ss@db:5432/orchestra?connect_timeout=3")
    assert url.startswith("postgresql+psycopg://u:p%40ss@db:5432/orchestra?")
    assert "connect_timeout=3" in url and "tcp_user_timeout=15000" in url
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_message_ids_name_their_task() -> None:
    assert task_of_message(message_id(42, "abc")) == 42
    assert task_of_message("someone-else-7") is None
    assert task_of_message("orchestra-task-x-1") is None


def test_install_queue_routes_a_module_and_defaults_to_default() -> None:
    assert parse_manifest(BASE).queue == "default"
    routed = {**BASE, "install": {**BASE["install"], "queue": "gpu"}}  # type: ignore[dict-item]
    assert parse_manifest(routed).queue == "gpu"


@pytest.mark.parametrize("queue", ["", "has space", "../x", 7, "a" * 65, "new\nline"])
def test_a_bad_install_queue_is_named(queue: object) -> None:
    bad = {**BASE, "install": {**BASE["install"], "queue": queue}}  # type: ignore[dict-item]
    with pytest.raises(InvalidMetadata, match="install.queue"):
        parse_manifest(bad)


def test_a_worker_drops_the_generations_nobody_names(settings: Settings) -> None:
    from orchestra.distributed.client import ApiClient
    from orchestra.distributed.modules import WorkerModules
    from orchestra.service import Service

    service = Service(settings)  # the database, with one module installed
    try:
        info = service.register(str(DATA / "modules" / "sleeps"))
        current = service.registry.runnable(info.id)[1].root.name
        stale, foreign = "a" * 32, "not-a-generation"
        for name in (current, stale, foreign):
            (settings.installs_dir / name).mkdir(parents=True, exist_ok=True)
        modules = WorkerModules(settings, ApiClient("http://127.0.0.1:9", "", "w"))
        assert modules.drop_unused(service.db) == [stale]
        left = {p.name for p in settings.installs_dir.iterdir()}
        assert current in left and foreign in left and stale not in left
    finally:
        service.close()


def test_a_worker_that_cannot_reach_its_database_says_so(settings: Settings) -> None:
    from tests.support.helpers import free_port

    port = free_port()  # nothing listens there
    unreachable = settings.with_overrides(
        broker_url="redis://127.0.0.1:1/0", api_url="http://127.0.0.1:1",
        database_url=f"postgresql+psycopg://orchestra:secret@127.0.0.1:{port}/orchestra",
    )  # fmt: skip
    code, _out, err = run_cli(["worker"], unreachable)
    assert code == 7 and "cannot reach the database" in err
    assert "secret" not in err and "Traceback" not in err


def test_an_upload_that_fails_is_sent_again_whole(tmp_path: Path) -> None:
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from orchestra.distributed import client as api_client

    received: list[tuple[int, bytes, str]] = []

    class FlakyApi(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if not received else 201  # the first attempt fails
            received.append((status, body, self.headers["X-Orchestra-Sha256"]))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        data = tmp_path / "out.bin"
        data.write_bytes(b"x" * 300_000)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        api_client.ApiClient(url, "", "w1").upload_output(7, "sub dir/out.bin", data)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert [status for status, _, _ in received] == [503, 201]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert all(body == data.read_bytes() and sha == digest for _, body, sha in received)


def test_the_worker_keeps_its_connection_and_replaces_one_the_server_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from orchestra.distributed import client as api_client

    ports: list[int] = []

    class KeepAliveApi(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            ports.append(self.client_address[1])
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            if len(ports) == 2:
                self.close_connection = True  # dropped without a word, as an idle timeout does

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data = tmp_path / "out.txt"
    data.write_text("result\n")
    try:
        client = api_client.ApiClient(f"http://127.0.0.1:{server.server_address[1]}", "", "w1")
        with caplog.at_level(logging.WARNING, logger="orchestra.distributed.client"):
            for index in range(4):
                client.upload_output(7, f"out-{index}.txt", data)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    first, second = ports[0], ports[2]
    assert ports == [first, first, second, second] and first != second
    assert "could not" not in caplog.text  # a dropped idle connection is no failed attempt


def _worker_env(home: Path, api_url: str, token: str, **more: str) -> dict[str, str]:
    env = clean_environ()
    return {
        **env, "ORCHESTRA_HOME": str(home), "ORCHESTRA_API_URL": api_url,
        "ORCHESTRA_API_TOKEN": token, "ORCHESTRA_BROKER_URL": "redis://127.0.0.1:1/0",
        **more,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("token", "named"),
    [
        ("wrong-token", "ORCHESTRA_API_TOKEN"),
        ("api-token", "--role worker"),
        ("worker", "ORCHESTRA_EXECUTOR=local"),
    ],
)
def test_a_worker_refuses_to_start_where_it_would_fail_every_task(
    tmp_path: Path,
    uv_cache: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    token: str,
    named: str,
) -> None:
    """A wrong token, or an API that runs its tasks itself: it says so instead of consuming,
    and never announces itself as a worker."""
    api = ServerProcess(tmp_path / "api", uv_cache, api_token="api-token")
    api.start()
    try:
        if token == "worker":  # a good worker token, made through the API
            made = http("POST", api.url + "/tokens", json_body={"name": "w", "role": "worker"},
                        headers={"Authorization": "Bearer api-token"})  # fmt: skip
            token = made.json()["token"]
        argv = [sys.executable, "-m", "orchestra", "worker", "--name", "w"]
        database = postgres_server.orchestra_database()
        env = _worker_env(
            tmp_path / "worker", api.url, token, ORCHESTRA_DATABASE_URL=database,
            ORCHESTRA_BROKER_URL=redis_server.url(),
        )  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    finally:
        api.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert named in done.stderr and "Traceback" not in done.stderr
    assert " ready." not in done.stderr
    db = Database(database)
    try:
        assert workers.list_workers(db) == []
    finally:
        db.dispose()


def test_a_worker_started_before_its_api_waits_for_it_then_takes_tasks(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    """A reboot or a compose file may start workers first: they wait, telling it once."""
    port, database = free_port(), postgres_server.orchestra_database()
    shared = {"ORCHESTRA_BROKER_URL": redis_server.url(), "ORCHESTRA_DATABASE_URL": database}
    token = make_token(database, "early")
    env = _worker_env(tmp_path / "worker", f"http://127.0.0.1:{port}", token, **shared)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestra", "worker", "--name", "early"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    api: subprocess.Popen[bytes] | None = None
    try:
        wait_for(log.read_text, lambda text: "failed (told once" in text, timeout=60,
                 what="the worker to say the API is out of reach")  # fmt: skip
        time.sleep(3)  # a few more tries, each refused
        assert worker.poll() is None and " ready." not in log.read_text()
        api_env = {**env, "ORCHESTRA_HOME": str(tmp_path / "api"), "ORCHESTRA_EXECUTOR": "celery",
                   "ORCHESTRA_API_TOKEN": "t"}  # fmt: skip
        api = subprocess.Popen(
            [sys.executable, "-m", "orchestra", "serve", "--port", str(port)], env=api_env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(log.read_text, lambda text: " ready." in text, timeout=90,
                 what="the worker to take tasks once the API answers")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
    text = log.read_text()
    assert text.count("failed (told once") == 1
    assert text.count("before taking tasks works again") == 1
