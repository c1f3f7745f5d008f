"""``orchestra worker``: claims tasks from the database, runs them under the local supervisor.

Per message: claim the fairest queued task of the message's queue (queued -> running under
this worker's name, or nothing happens),
build the module's generation if this worker lacks it, start it with the same executor and
supervisor as a local task (in the worker's own data folder), send the logs to the API while
it runs, then the outputs, then record the outcome, conditional on still being the task's
worker: a task settled meanwhile (its worker counted as lost) stays settled. A heartbeat
thread renews the worker's leases and stops the tasks whose kill the database asks for.

Nothing a worker started outlives it: its executor is tied to the worker process (a dead
worker's supervisors stop their tasks, see ``executors.local``), and a worker that cannot
renew its lease for long enough that the server is about to count it as lost (its network
cut, its database away) stops its tasks itself, before the lease runs out.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from orchestra import compiles
from orchestra.distributed import leftovers
from orchestra.distributed.client import ApiClient, ApiError
from orchestra.distributed.models import ModelCache
from orchestra.distributed.modules import WorkerModules
from orchestra.distributed.names import KILL_CHANNEL, NOTIFY_CHANNEL
from orchestra.executors.base import Handle, TaskSpec
from orchestra.executors.local import LocalExecutor
from orchestra.models.trainings import STEPS
from orchestra.outages import Outage
from orchestra.storage.files import TaskFolder, safe_join
from orchestra.tasks import lifecycle, workers
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database
    from orchestra.tasks.lifecycle import TaskRecord

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
LOG_INTERVAL = 1.0  # seconds between two sendings of a running task's new log lines
LOG_CHUNK = 1024 * 1024  # bytes of one log sent at most per request
DROP_INTERVAL = 60.0  # seconds between two looks for generations nobody uses any more


LEASE_LOST = "its lease could not be renewed"


def heartbeat_interval(lease: float) -> float:
    """Seconds between heartbeats: five per lease, at most 5 s, at least 0.5 s."""
    return max(0.5, min(5.0, lease / 5))


def give_up_after(lease: float, grace: float) -> float:
    """Seconds without a renewal after which a worker stops its tasks.

    Late enough to ride out a short outage, early enough that the tasks, given their kill
    grace, are gone before the lease runs out and the server counts the worker as lost.
    """
    interval = heartbeat_interval(lease)
    return max(interval, lease - grace - interval)


@dataclass
class _Running:
    """One task this worker runs: its supervisor once started, and why it must stop."""

    handle: Handle | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    stop: str | None = None  # a kill request, or the row settled elsewhere


class Worker:
    """Runs the tasks Celery hands it, one thread each, under the local supervisor."""

    def __init__(
        self, settings: Settings, db: Database, *, name: str, queues: list[str], concurrency: int
    ) -> None:
        self.settings = settings
        self.db = db
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.client = ApiClient(settings.api_url, settings.api_token, name)
        self.modules = WorkerModules(settings, self.client)
        self.models = ModelCache(settings, self.client)
        self.executor = LocalExecutor(settings, tied=True, models=self.models.folder)
        self._renewed = time.monotonic()  # when the leases were last renewed
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._beats: threading.Thread | None = None

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        """Announce the worker, settle what an earlier run of it left, start the heartbeats."""
        self.executor.open()
        workers.register(
            self.db, self.name, queues=self.queues, concurrency=self.concurrency,
            hostname=socket.gethostname(),
        )  # fmt: skip
        self._renewed = time.monotonic()  # announcing it was its first heartbeat
        leftovers.abandon_earlier(self.db, self.name)
        leftovers.stop_orphans(self.executor, self.settings.tasks_dir)
        self._beats = threading.Thread(target=self._beat, name="orchestra-heartbeat", daemon=True)
        self._beats.start()
        threading.Thread(target=self._hear_kills, name="orchestra-kills", daemon=True).start()
        threading.Thread(target=self._guard_lease, name="orchestra-lease", daemon=True).start()

    def stop(self) -> None:
        """Stop the heartbeats and say goodbye; the executor's helpers stop too."""
        self._stopping.set()
        if self._beats is not None:
            self._beats.join(timeout=10)
        try:
            workers.forget(self.db, self.name)
        except Exception as exc:  # the database may be gone: the lease runs out anyway
            _LOGGER.warning("could not remove worker %s from the database: %s", self.name, exc)
        self.executor.close()
        compiles.stop_own_compiles()

    # -- one task -----------------------------------------------------------------------------

    def run(self, task_id: int, queue: str | None = None) -> None:
        """Woken by the message of ``task_id``: run the fairest queued task of its queue.

        A message only wakes the worker; which task it runs is fair share's choice
        (``lifecycle.claim_fairest``), so that the broker's order never lets one client's
        thousand tasks hold back another's. Each queued task has its message, and each
        message claims at most one task: the queue drains as before. A claim that finds no
        task queued (another wake-up took it, it was killed) runs nothing.
        """
        steps = _Steps()
        if queue not in self.queues:  # the message's queue, else its task's
            queue = self._persist(lambda: self._queue_of(task_id))
        row = self._persist(lambda: lifecycle.claim_fairest(self.db, self.name, queue))
        steps.mark("claim")
        if row is None:
            _LOGGER.info("woken by task %s: no task queued in %s any more", task_id, queue)
            return
        entry = _Running()
        with self._lock:
            self._running[row.id] = entry
        try:
            outcome = self._outcome(row, entry, steps)
            self._settle(row, outcome, steps)
        finally:
            with self._lock:
                self._running.pop(row.id, None)
            shutil.rmtree(TaskFolder(self.settings.tasks_dir, row.id).root, ignore_errors=True)

    def _queue_of(self, task_id: int) -> str:
        """The queue a message came through: its task's (the first of this worker's if gone)."""
        row = lifecycle.read(self.db, task_id)
        return row.queue if row is not None else self.queues[0]

    def _outcome(self, row: TaskRecord, entry: _Running, steps: _Steps) -> Outcome:
        try:
            spec = dict(row.spec or {})
            task = TaskSpec.from_json(spec)
            with self.modules.using(task.module_id, task.generation):
                steps.mark("module")
                if entry.stop:
                    return Outcome(TaskStatus.KILLED, None, "killed on request before it started")
                return self._execute(row.id, spec, entry, steps)
        except Exception as exc:  # whatever it was, the row must say why the task ended
            _LOGGER.exception("task %s failed on worker %s", row.id, self.name)
            return Outcome(TaskStatus.ERROR, None, f"worker {self.name} could not run it: {exc}")

    def _execute(
        self, task_id: int, spec: dict[str, Any], entry: _Running, steps: _Steps
    ) -> Outcome:
        folder = TaskFolder(self.settings.tasks_dir, task_id)
        shutil.rmtree(folder.root, ignore_errors=True)  # a fresh folder: nothing of before
        folder.output.mkdir(parents=True)
        entry.handle = self.executor.start(spec)
        if not self.executor.watch(entry.handle, entry.ended.set):
            raise RuntimeError("the worker's exit watcher is not running")
        if entry.stop:  # asked while it was starting
            self.executor.kill(entry.handle)
        training = spec.get("kind") == "train"
        shipper = _LogShipper(self.client, task_id, folder, steps=training)
        while not entry.ended.wait(LOG_INTERVAL):
            shipper.send()
        steps.mark("run")
        shipper.send()
        outcome = self.executor.outcome(task_id, spec)
        if entry.stop == LEASE_LOST:  # not the user's kill: the server says "lost" anyway
            return Outcome(TaskStatus.ERROR, None, f"worker {self.name} lost: {LEASE_LOST}")
        if outcome is None:
            return self.executor.orphan_outcome(task_id, entry.handle, entry.stop is not None)
        if training:  # the model goes to the API's store, not among the outputs
            outcome = self.models.send_training(task_id, folder.output, outcome)
        else:
            outcome = self._send_outputs(task_id, folder, outcome)
        steps.mark("send")
        return outcome

    def _send_outputs(self, task_id: int, folder: TaskFolder, outcome: Outcome) -> Outcome:
        try:
            for item in outcome.output or []:
                name = str(item["name"])
                self.client.upload_output(task_id, name, safe_join(folder.output, name))
        except ApiError as exc:
            return Outcome(TaskStatus.ERROR, outcome.exit_code, f"outputs not delivered: {exc}")
        return outcome

    def _settle(self, row: TaskRecord, outcome: Outcome, steps: _Steps) -> None:
        # announced: whoever waits on an API server hears of it at once, not at its next look
        final = self._persist(
            lambda: lifecycle.finish(
                self.db, row.id, outcome, worker=self.name, announce=NOTIFY_CHANNEL
            )
        )
        if final is None:
            _LOGGER.warning("task %s was settled elsewhere; this late result is dropped", row.id)
            return
        steps.mark("finish")
        _LOGGER.info("task %s ended: %s (%s)", row.id, final.status, steps)

    def _persist(self, write: Callable[[], T]) -> T:
        """``write()``, tried again while the database is out of reach, for up to a lease.

        A database restart or a network blip must not cost a task its result; past a lease
        the server has settled the task anyway, and the conditional write changes nothing.
        """
        deadline = time.monotonic() + self.settings.worker_lease
        pause = 0.2
        while True:
            try:
                return write()
            except (OperationalError, InterfaceError) as exc:  # the connection, not the data
                if time.monotonic() + pause > deadline:
                    raise
                _LOGGER.warning("database out of reach (%s); trying again", exc.orig or exc)
            self._stopping.wait(pause)
            pause = min(pause * 2, 5.0)

    # -- heartbeats -----------------------------------------------------------------------------

    def _beat(self) -> None:
        interval = heartbeat_interval(self.settings.worker_lease)
        last_drop = time.monotonic()
        outage = Outage(_LOGGER, f"the heartbeat of {self.name}")
        while not self._stopping.wait(interval):
            try:
                self._renew()
                self._renewed = time.monotonic()
                if time.monotonic() - last_drop > DROP_INTERVAL:
                    last_drop = time.monotonic()
                    self.modules.drop_unused(self.db)
                    self.models.drop_unused(self.db)
            except Exception as exc:  # the database may be out of reach for a while
                outage.failed(exc)
            else:
                outage.worked()

    def _renew(self) -> None:
        # taken before the renewal reads the rows: each of these was claimed before it
        with self._lock:
            started = [
                task_id
                for task_id, e in self._running.items()
                if e.handle is not None and not e.ended.is_set()
            ]
        renewal = workers.renew(self.db, self.name)
        for task_id in renewal.kills:
            self._stop(task_id, "kill requested")
        for task_id in set(started) - renewal.running:  # settled elsewhere while out of reach?
            self._stop(task_id, "settled elsewhere")

    def _guard_lease(self) -> None:
        """Stop every task once the leases went unrenewed for too long (a cut network).

        Its own thread: a renewal may hang in a dead connection for longer than a lease.
        """
        limit = give_up_after(self.settings.worker_lease, self.settings.kill_grace)
        while not self._stopping.wait(min(0.5, limit / 4)):
            if time.monotonic() - self._renewed > limit:
                with self._lock:
                    mine = list(self._running)
                for task_id in mine:  # each is told once, by _stop
                    self._stop(task_id, LEASE_LOST)

    def _hear_kills(self) -> None:
        """Act on kills announced on the broker at once; the heartbeat reads the flags anyway."""
        import redis

        outage = Outage(_LOGGER, "hearing kills on the broker")
        while not self._stopping.is_set():
            try:
                client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=5)
                with client.pubsub(ignore_subscribe_messages=True) as channel:
                    channel.subscribe(KILL_CHANNEL)
                    outage.worked()
                    while not self._stopping.is_set():
                        message = channel.get_message(timeout=1.0)
                        if message and str(message["data"], "ascii", "replace").isdigit():
                            self._check_kill(int(message["data"]))
            except Exception as exc:  # the broker restarts or is out of reach: listen again
                outage.failed(exc)
                self._stopping.wait(1.0)

    def _check_kill(self, task_id: int) -> None:
        with self._lock:
            mine = task_id in self._running
        if mine:  # the row says whether the kill is real: the channel is only a prompt
            row = lifecycle.read(self.db, task_id)
            if row is not None and row.kill_requested and row.worker == self.name:
                self._stop(task_id, "kill requested")

    def _stop(self, task_id: int, why: str) -> None:
        with self._lock:
            entry = self._running.get(task_id)
        if entry is None or entry.stop or entry.ended.is_set():
            return  # unknown here, already stopping, or already over
        entry.stop = why
        if entry.handle is not None:
            _LOGGER.info("stopping task %s: %s", task_id, why)
            self.executor.kill(entry.handle)


class _Steps:
    """How long each step of a task took on this worker, for its log line."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._spent: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        """``step`` ended now."""
        now = time.perf_counter()
        self._spent.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in self._spent)


class _LogShipper:
    """Sends what a task's logs gained since the last call, from where the API's copy ends."""

    def __init__(
        self, client: ApiClient, task_id: int, folder: TaskFolder, *, steps: bool = False
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.paths = {"stdout": folder.stdout, "stderr": folder.stderr}
        self.sent = {"stdout": 0, "stderr": 0}
        # a training's metrics.jsonl, sent whole whenever it grew (read as it trains)
        self.steps = folder.output / STEPS if steps else None
        self.snapshot = folder.root / f".{STEPS}"  # still while it is sent: the task appends
        self.steps_sent = 0

    def send(self) -> None:
        """Send every stream's new bytes; a failure is tried again at the next call."""
        for stream, path in self.paths.items():
            try:
                self._send(stream, path)
            except (ApiError, OSError) as exc:
                _LOGGER.warning("log of task %s not sent: %s", self.task_id, exc)
        if self.steps is not None:
            try:
                self._send_steps(self.steps)
            except (ApiError, OSError) as exc:
                _LOGGER.warning("metrics of task %s not sent: %s", self.task_id, exc)

    def _send_steps(self, path: Path) -> None:
        size = path.stat().st_size if path.is_file() else 0
        if size > self.steps_sent:
            shutil.copyfile(path, self.snapshot)
            self.client.upload_output(self.task_id, STEPS, self.snapshot)
            self.steps_sent = size

    def _send(self, stream: str, path: Path) -> None:
        if not path.exists():
            return
        with open(path, "rb") as log:
            while True:
                log.seek(self.sent[stream])
                data = log.read(LOG_CHUNK)
                if not data:
                    return
                self.sent[stream] = self.client.append_log(
                    self.task_id, stream, self.sent[stream], data
                )
