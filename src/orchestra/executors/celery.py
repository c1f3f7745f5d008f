"""The Celery executor (``ORCHESTRA_EXECUTOR=celery``): tasks run on workers.

The API server only publishes "run task N" to the module's queue; workers claim the row,
run it and record the outcome. What the broker may lose, the database still holds: the
runner's sweep ends the tasks of workers that stopped renewing their lease, and this
executor's ``reconcile`` sends again the queued tasks that the broker no longer holds (a
restart without persistence forgets every message: PITFALLS #14). It compares the queued
rows with the broker's queues and the messages it delivered within a claim's time whenever
the broker's run id changes (a restart), and every ``BROKER_SCAN`` seconds anyway. A second
message for a task is harmless: only one claim of a row can succeed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from orchestra.distributed.names import (
    KILL_CHANNEL,
    NOTIFY_CHANNEL,
    TASK_NAME,
    message_id,
    task_of_message,
)
from orchestra.executors.base import TaskSpec
from orchestra.outages import Outage
from orchestra.storage.db import POSTGRES_CONNECT_ARGS, Database
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from celery import Celery

    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
BROKER_SCAN = 30.0  # seconds between two comparisons of the queue with the broker's messages
SETTLE_GRACE = 2.0  # seconds a queued row must be old before a scan may send it again
MIN_CLAIM_WINDOW = 10.0  # seconds a delivered message's row may stay queued (at least)
_UNACKED = "unacked"  # kombu's Redis hash of delivered, unacknowledged messages
_UNACKED_INDEX = "unacked_index"  # kombu's sorted set: delivery tag by time of delivery


class CeleryExecutor:
    """Publishes tasks to Celery; re-sends what the broker lost. Workers do the rest."""

    name = "celery"
    runs_here = False  # workers claim, run and record the tasks

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._db: Database | None = None
        self._redis: Any = None
        self._lock = threading.Lock()
        self._broker_run: str | None = None
        self._last_scan = 0.0
        self._comparing = Outage(_LOGGER, "comparing the queue with the broker")
        self._listening = threading.Event()

    def _celery(self) -> Celery:
        with self._lock:
            if self._app is None:
                from orchestra.distributed import require_extra
                from orchestra.distributed.app import make_app

                require_extra()
                self._app = make_app(self.settings)
            return self._app

    def open(self) -> None:
        """Check the extra and the settings; connections are made on first use."""
        from orchestra.distributed import check_settings, require_extra

        require_extra()
        check_settings(self.settings, worker=False)

    def listen(self, on_ended: Callable[[int], None]) -> None:
        """Call ``on_ended(task_id)`` when a worker has ended a task (PostgreSQL's NOTIFY).

        Without it, whoever waits for a remote task looks at its row every 50 ms.
        """
        if not make_url(self.settings.db_url).drivername.startswith("postgresql"):
            return
        self._listening.set()
        thread = threading.Thread(
            target=self._listen, args=(on_ended,), name="orchestra-listen", daemon=True
        )
        thread.start()

    def _listen(self, on_ended: Callable[[int], None]) -> None:
        import psycopg

        url = make_url(self.settings.db_url).set(drivername="postgresql")
        conninfo = url.update_query_dict(POSTGRES_CONNECT_ARGS)
        outage = Outage(_LOGGER, "listening for ended tasks")
        while self._listening.is_set():
            try:
                with psycopg.connect(
                    conninfo.render_as_string(hide_password=False), autocommit=True
                ) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    outage.worked()
                    while self._listening.is_set():
                        for note in connection.notifies(timeout=1.0):
                            if note.payload.isdigit():
                                on_ended(int(note.payload))
            except Exception as exc:  # the database restarts, the network drops: listen again
                outage.failed(exc)
                time.sleep(1.0)

    def close(self) -> None:
        """Close the broker connections and the reconciler's database."""
        self._listening.clear()
        with self._lock:
            app, self._app = self._app, None
            db, self._db = self._db, None
            client, self._redis = self._redis, None
        if app is not None:
            app.close()
        if client is not None:
            client.close()
        if db is not None:
            db.dispose()

    # -- publishing -----------------------------------------------------------------------------

    def send(self, spec: TaskSpec) -> None:
        """Publish "run task N" to the module's queue; on failure the reconciler sends it later."""
        self._publish(spec.task_id, spec.queue)

    def _publish(self, task_id: int, queue: str) -> bool:
        try:
            # published to the queue's list through the default exchange: nothing to declare
            # (each worker declares the queues it takes), and looking that up costs each send
            self._celery().send_task(
                TASK_NAME, args=[task_id], queue=queue, task_id=message_id(task_id, _nonce()),
                declare=[],
            )  # fmt: skip
        except Exception as exc:  # kombu raises several kinds; the reconciler sends it later
            _LOGGER.warning("task %s not published (the reconciler will retry): %s", task_id, exc)
            return False
        return True

    def signal_kill(self, task_id: int, worker: str | None) -> None:
        """Tell the workers at once (Redis pub/sub); the flag reaches them at a heartbeat anyway."""
        try:
            self._client().publish(KILL_CHANNEL, str(task_id))
        except Exception as exc:  # only a prompt: the database flag is what counts
            _LOGGER.info("could not announce the kill of task %s: %s", task_id, exc)

    # -- reconciling ----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Send again the queued tasks that the broker no longer holds.

        Called at every sweep (each second or so): a broker out of reach is told when it goes
        and when it is back, not at every sweep.
        """
        try:
            self._resend_lost()
        except Exception as exc:  # the broker may be down; the next round tries again
            self._comparing.failed(exc)
            return
        self._comparing.worked()

    def _resend_lost(self) -> None:
        run = self._broker_run_id()
        restarted = run != self._broker_run
        if not restarted and time.monotonic() - self._last_scan < BROKER_SCAN:
            return
        # after a restart every queued row counts, however young: a message published just
        # before it is gone too (one published since is found, and a duplicate is harmless)
        grace = 0.0 if restarted else SETTLE_GRACE
        queued = self._queued(before=lifecycle.now() - timedelta(seconds=grace))
        if queued:
            held = self._held_tasks(set(queued.values()))
            missing = {task: queue for task, queue in queued.items() if task not in held}
            sent = sum(self._publish(task, queue) for task, queue in missing.items())
            if missing:
                _LOGGER.warning("sent %d of %d lost queued task(s) again", sent, len(missing))
        self._broker_run, self._last_scan = run, time.monotonic()

    def _database(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = Database(self.settings.db_url)
            return self._db

    def _queued(self, *, before: datetime) -> dict[int, str]:
        """The queued tasks created before ``before``, with the queue each goes to."""
        query = select(TaskRow.id, TaskRow.queue).where(
            TaskRow.status == TaskStatus.QUEUED.value, TaskRow.created < before
        )
        with self._database().connect() as connection:
            rows = list(connection.execute(query))
        return {int(task_id): str(queue or "default") for task_id, queue in rows}

    def _client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.settings.broker_url, socket_timeout=10, socket_connect_timeout=5
            )
        return self._redis

    def _broker_run_id(self) -> str:
        """The broker's run id: it changes when Redis restarts (and may have lost messages)."""
        return str(self._client().info("server").get("run_id", ""))

    def _held_tasks(self, queues: Iterable[str]) -> set[int]:
        """The task ids that the broker's queues and recently delivered messages name.

        A worker claims a task's row as soon as its message arrives (retrying for up to a
        lease while the database is away), so a message delivered longer ago than that
        whose row is still queued was taken by a worker that died before its claim. Such a
        message would come back only at the broker's visibility timeout: it does not count
        as held, and the task is sent again (the row lets only one delivery run it).
        """
        client = self._client()
        raw: list[Any] = []
        for queue in queues:
            raw += client.lrange(queue, 0, -1)
        since = time.time() - max(MIN_CLAIM_WINDOW, self.settings.worker_lease)
        recent = client.zrangebyscore(_UNACKED_INDEX, since, "+inf")
        if recent:
            raw += [_delivered(value) for value in client.hmget(_UNACKED, recent)]
        return {task for task in map(_task_of, raw) if task is not None}


def _nonce() -> str:
    return uuid.uuid4().hex[:8]


def _delivered(value: Any) -> Any:
    """An unacked entry is ``[message, exchange, routing_key]``: the message."""
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return None
    return parsed[0] if isinstance(parsed, list) and parsed else None


def _task_of(message: Any) -> int | None:
    """The task id a broker message carries (kombu's JSON envelope of a Celery message)."""
    try:
        envelope = json.loads(message) if isinstance(message, bytes | str) else message
        return task_of_message(str(envelope["headers"]["id"]))
    except (TypeError, ValueError, KeyError):
        return None
