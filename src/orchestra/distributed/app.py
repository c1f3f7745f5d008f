"""The Celery app, built by a factory (nothing at import time), and how tasks are published.

Celery only carries "run task N" to a worker of the module's queue; the database row decides
whether it runs (PITFALLS #13): a worker claims the row before it starts anything, so a
message delivered twice, or one for a task killed while queued, runs nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from orchestra.distributed.names import TASK_NAME

if TYPE_CHECKING:
    from celery import Celery

    from orchestra.config import Settings
    from orchestra.distributed.worker import Worker


def make_app(settings: Settings, worker: Worker | None = None) -> Celery:
    """A Celery app on the configured broker; with ``worker``, it also runs tasks."""
    from celery import Celery

    app = Celery("orchestra", broker=settings.broker_url, set_as_current=False)
    app.conf.update(_config(settings))
    if worker is not None:

        @app.task(name=TASK_NAME, ignore_result=True, bind=True)
        def run_task(self: Any, task_id: int) -> None:
            delivered = getattr(self.request, "delivery_info", None) or {}
            worker.run(int(task_id), queue=delivered.get("routing_key"))

        app.conf.worker_pool = waking_pool()
        _keep_tasks_through_broker_loss()
    return app


def _keep_tasks_through_broker_loss() -> None:
    """Keep running tasks when the broker connection drops, without Celery's notice about it.

    Celery 6 will cancel the running late-acknowledged tasks when the connection to the
    broker is lost, and Celery 5 warns of it at every loss. A task here is tied to its row,
    not to its message: it keeps running through a broker restart, its lease renewed in the
    database, and a message delivered again finds the row taken. So the setting stays off,
    and the notice is silenced, once the worker is ready: Celery's logging set-up puts its
    own warning filters first.
    """
    from celery.signals import worker_ready

    worker_ready.connect(_silence_cancel_notice, weak=False)


def _silence_cancel_notice(**_: Any) -> None:
    import warnings

    from celery.exceptions import CPendingDeprecationWarning

    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )  # fmt: skip


def waking_pool() -> type:
    """Celery's thread pool, made to wake the worker's event loop when a task has ended.

    The loop sleeps in its poll until a socket or a timer wakes it; a task ends in a pool
    thread, and the acknowledgement of its message wakes nothing, so the next message would
    be fetched only at the loop's next timer (up to seconds later). A pipe the loop watches,
    written to once the message is acknowledged, makes the loop turn at once.
    """
    from celery.concurrency.thread import TaskPool

    class WakingPool(TaskPool):  # type: ignore[misc]
        _read: int | None = None
        _wake: int | None = None

        def register_with_event_loop(self, loop: Any) -> None:
            # called again with each new loop (after a broker reconnection): one pipe serves
            super().register_with_event_loop(loop)
            if self._read is None:
                self._read, self._wake = os.pipe()
                os.set_blocking(self._read, False)
                os.set_blocking(self._wake, False)
            loop.add_reader(self._read, _drain, self._read)

        def on_apply(self, *args: Any, callback: Any = None, **kwargs: Any) -> Any:
            def then_wake(*result: Any) -> None:
                try:
                    if callback is not None:
                        callback(*result)  # acknowledges the message (task_acks_late)
                finally:
                    self.wake()

            return super().on_apply(*args, callback=then_wake, **kwargs)

        def wake(self) -> None:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):  # a full pipe wakes it already
                    os.write(self._wake, b"x")

    return WakingPool


def _drain(fd: int) -> None:
    """Empty the wake pipe: the turn of the loop it caused is all it is for."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _config(settings: Settings) -> dict[str, Any]:
    return {
        # acknowledged once run: a worker that dies between the delivery and its claim
        # leaves the message to be delivered again; any later delivery finds the row
        # claimed and runs nothing, so a long task redelivered never runs twice
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "broker_transport_options": {"visibility_timeout": max(60.0, 10 * settings.worker_lease)},
        # one message at a time: a long task must not hold others while a worker idles
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "default",
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # a publish that fails leaves the row queued; the reconciler sends it again
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
        },  # fmt: skip
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
