"""Starting a worker: check the settings, build the Celery app around a Worker, consume."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from orchestra.errors import Unreachable

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
# libpq settings that make a worker notice a dead network in seconds rather than in the
# kernel's minutes of retransmissions, so that its heartbeats fail and retry promptly
_RESILIENT = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def database_url(url: str) -> str:
    """``url`` with libpq's network timeouts, for PostgreSQL; others unchanged."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return url
    extra = {k: v for k, v in _RESILIENT.items() if k not in parsed.query}
    return parsed.update_query_dict(extra).render_as_string(hide_password=False)


def default_name() -> str:
    """A worker name unique on this machine: the host name and the process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: Settings, *, name: str, queues: list[str], concurrency: int) -> int:
    """Consume the queues until stopped (SIGTERM or Ctrl-C: Celery's warm shutdown)."""
    from orchestra.distributed import check_settings, require_extra

    require_extra()
    check_settings(settings, worker=True)
    from orchestra.distributed.app import make_app
    from orchestra.distributed.worker import Worker
    from orchestra.executors import sandbox
    from orchestra.storage.db import Database

    state = sandbox.require(settings)  # refuses here when it is required and does not work
    _LOGGER.info("task sandbox: %s (%s)", "on" if state.active else "off", state.detail)
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(database_url(settings.database_url))
    worker = Worker(settings, db, name=name, queues=queues, concurrency=concurrency)
    try:
        db.create_schema()  # a worker may start first; the schema's lock serialises this
        worker.start()
    except OperationalError as exc:
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        raise Unreachable(f"cannot reach the database {where}: {exc.orig}") from exc
    _LOGGER.info("worker %s takes queue(s) %s, %d at once", name, ",".join(queues), concurrency)
    try:
        make_app(settings, worker).worker_main(
            [
                "worker", f"--concurrency={concurrency}",  # the pool: the app's worker_pool
                f"--queues={','.join(queues)}", f"--hostname={name}@%h",
                "--without-mingle", "--without-gossip", "--loglevel=INFO",
            ]
        )  # fmt: skip
    finally:
        worker.stop()
        db.dispose()
    return 0
