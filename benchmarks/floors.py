"""The least the parts a task goes through cost on this machine, each measured alone.

A floor is what a library or a service costs for the one thing Orchestra asks of it, with
nothing of Orchestra's own around it: an HTTP request on Flask and waitress, a Celery message
with Orchestra's settings, the two conditional writes a worker makes per task. They say how
much of a target's budget is spent before Orchestra does anything.

Run as ``python floors.py celery-worker BROKER_URL HOME COUNT DONE_FILE`` it is the Celery
floor's worker: Orchestra's Celery app whose task only counts, until COUNT have arrived.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BenchError, process_cpu
from live import Client, free_port, says_ready, wait_while_running

FLOOR_APP = Path(__file__).with_name("flask_floor.py")


@dataclass(frozen=True)
class Floor:
    """CPU seconds per operation, by the process that spent them."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def text(self) -> str:
        """``total ms (part a ms, part b ms)``."""
        each = ", ".join(f"{name} {1000 * value:.2f}" for name, value in self.parts.items())
        return f"{1000 * self.total:.2f} ms ({each})"


@contextlib.contextmanager
def floor_app() -> Iterator[tuple[int, int]]:
    """The least Flask app on waitress, running: its port and its pid."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FLOOR_APP), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client, deadline = Client(port), time.monotonic() + 30
        while True:
            try:
                client.get("/task/1")
                break
            except OSError:
                client.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()


def request_floor(count: int) -> float:
    """The server's CPU seconds per GET of a constant JSON, over a kept-alive connection."""
    with floor_app() as (port, pid):
        client = Client(port)
        try:
            for _ in range(count // 10):  # warm up
                client.get("/task/1")
            before = process_cpu(pid)
            for _ in range(count):
                client.get("/task/1")
            return (process_cpu(pid) - before) / count
        finally:
            client.close()


def upload_floor(count: int) -> Floor:
    """One small output sent the way a worker sends it: a PUT on a kept-alive connection."""
    headers = {"Content-Type": "application/octet-stream", "X-Orchestra-Sha256": "0" * 64}
    with floor_app() as (port, pid):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def put(task_id: int) -> None:
            connection.request("PUT", f"/task/{task_id}/output/done.txt", b"ok\n", headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 201:
                raise BenchError(f"the floor app answered {answer.status} to an upload")

        try:
            for task_id in range(count // 10):  # warm up
                put(task_id)
            server, client = process_cpu(pid), time.process_time()
            for task_id in range(count):
                put(task_id)
            parts = {"client": time.process_time() - client, "server": process_cpu(pid) - server}
        finally:
            connection.close()
    return Floor({name: value / count for name, value in parts.items()})


def database_floor(url: str, count: int) -> Floor:
    """A worker's two writes per task on PostgreSQL: the claim, then the finish announced.

    Plain psycopg on a table of its own (``url`` names an empty database): a conditional
    UPDATE ... RETURNING in a transaction each, the second with a NOTIFY.
    """
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        connection.execute(
            "CREATE TABLE floor (id serial PRIMARY KEY, status text, worker text, "
            "started timestamptz, finished timestamptz, error text)"
        )
        connection.execute(
            "INSERT INTO floor (status) SELECT 'queued' FROM generate_series(1, %s)", (count,)
        )
        connection.commit()
        backend = connection.info.backend_pid
        server, client = process_cpu(backend), time.process_time()
        for task_id in range(1, count + 1):
            _claim_and_finish(connection, task_id)
        parts = {"client": time.process_time() - client, "server": process_cpu(backend) - server}
    return Floor({name: value / count for name, value in parts.items()})


def _claim_and_finish(connection: Any, task_id: int) -> None:
    with connection.transaction():
        connection.execute(
            "UPDATE floor SET status = 'running', worker = %s, started = now() "
            "WHERE id = %s AND status = 'queued' RETURNING id", ("w", task_id),
        ).fetchone()  # fmt: skip
    with connection.transaction():
        connection.execute(
            "UPDATE floor SET status = 'done', finished = now(), error = NULL "
            "WHERE id = %s AND status = 'running' AND worker = %s RETURNING id", (task_id, "w"),
        ).fetchone()  # fmt: skip
        connection.execute("SELECT pg_notify('floor', %s)", (str(task_id),))


def celery_floor(broker_url: str, broker_pid: int, folder: Path, count: int) -> Floor:
    """A Celery message with Orchestra's settings: published, delivered, run, acknowledged.

    The worker is Orchestra's Celery app in a process of its own, its task only counting;
    ``count`` messages are published back to back, and the worker's, the broker's and the
    publisher's CPU counted until the worker has run the last.
    """
    from orchestra.config import load_settings
    from orchestra.distributed.app import make_app
    from orchestra.distributed.names import TASK_NAME

    folder.mkdir(parents=True, exist_ok=True)
    done, log = folder / "done", folder / "worker.log"
    argv = [sys.executable, __file__, "celery-worker", broker_url, str(folder), str(count)]
    with open(log, "wb") as out:
        worker = subprocess.Popen(argv + [str(done)], stdout=out, stderr=subprocess.STDOUT)
    app = make_app(load_settings({"broker_url": broker_url, "home": str(folder)}))
    try:
        failure = "the Celery floor's worker failed"
        wait_while_running(lambda: says_ready(log), worker, log, failure)
        start = {"worker": process_cpu(worker.pid), "broker": process_cpu(broker_pid)}
        publisher = time.process_time()
        for task_id in range(count):
            app.send_task(TASK_NAME, args=[task_id], queue="default")
        publisher = time.process_time() - publisher
        wait_while_running(done.exists, worker, log, failure)
        parts = {
            "worker": process_cpu(worker.pid) - start["worker"],
            "broker": process_cpu(broker_pid) - start["broker"],
            "publisher": publisher,
        }
    finally:
        app.close()
        worker.terminate()
        worker.wait(timeout=30)
    return Floor({name: value / count for name, value in parts.items()})


def _counting_worker(broker_url: str, home: str, count: int, done: Path) -> None:
    """Consume with Orchestra's Celery app; touch ``done`` once ``count`` tasks have run."""
    from orchestra.config import load_settings
    from orchestra.distributed.app import make_app

    class Counter:
        seen = 0

        def run(self, task_id: int, queue: str | None = None) -> None:
            self.seen += 1
            if self.seen == count:
                done.touch()

    settings = load_settings({"broker_url": broker_url, "home": home})
    app = make_app(settings, Counter())  # type: ignore[arg-type]  # only run() is called
    app.worker_main(
        ["worker", "--concurrency=1", "--queues=default", "--without-mingle", "--without-gossip",
         "--without-heartbeat", "--loglevel=INFO"]
    )  # fmt: skip


if __name__ == "__main__" and sys.argv[1:2] == ["celery-worker"]:
    _counting_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
