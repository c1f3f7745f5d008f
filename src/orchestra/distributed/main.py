"""Starting a worker: check the settings, build the Celery app around a Worker, consume."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from orchestra.errors import InvalidInput
from orchestra.outages import Outage

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
API_RETRY = 2.0  # seconds between two tries to reach the API at a worker's start
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


def wait_for_api(settings: Settings, name: str) -> None:
    """Return once the API answers and takes this worker's token and tasks.

    A worker that consumed without it would claim every task it is sent and end each in
    error. The API may start after its workers (a reboot, a compose file): an API out of
    reach is waited for; one that refuses the token, or runs its tasks itself, is an error.
    """
    from orchestra.distributed.client import ApiClient, ApiError

    client, where = ApiClient(settings.api_url, settings.api_token, name), settings.api_url
    outage = Outage(_LOGGER, f"reaching the API at {where} before taking tasks")
    while True:
        try:
            found = client.check()
            break
        except ApiError as exc:
            if exc.status in (401, 403):
                raise InvalidInput(
                    f"the API at {where} refuses this worker's token ({exc}): "
                    "ORCHESTRA_API_TOKEN must be a token with the worker role "
                    "(orchestra token create NAME --role worker)", key="api_token",
                ) from exc  # fmt: skip
            if exc.status is not None and exc.status < 500:
                raise InvalidInput(
                    f"ORCHESTRA_API_URL {where} does not answer as an Orchestra API: {exc}",
                    key="api_url",
                ) from exc
            outage.failed(exc)
        time.sleep(API_RETRY)
    outage.worked()
    if found["executor"] != "celery":
        raise InvalidInput(
            f"the API at {where} runs its tasks itself (ORCHESTRA_EXECUTOR={found['executor']}): "
            "no task would reach this worker; set ORCHESTRA_EXECUTOR=celery on the API servers",
            key="executor",
        )


def run_worker(settings: Settings, *, name: str, queues: list[str], concurrency: int) -> int:
    """Consume the queues until stopped (SIGTERM or Ctrl-C: Celery's warm shutdown)."""
    from orchestra import preflight

    preflight.check(settings, worker=True)
    from orchestra.distributed.app import make_app
    from orchestra.distributed.worker import Worker
    from orchestra.executors import sandbox
    from orchestra.storage.db import Database

    state = sandbox.require(settings)  # refuses here when it is required and does not work
    _LOGGER.info("task sandbox: %s", state.summary())
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(database_url(settings.database_url))
    worker = Worker(settings, db, name=name, queues=queues, concurrency=concurrency)
    try:
        db.create_schema()  # a worker may start first; the schema's lock serialises this
        wait_for_api(settings, name)
        worker.start()
    except OperationalError as exc:  # it went away since the check
        raise preflight.database_error(settings.database_url, exc) from exc
    _LOGGER.info("worker %s takes queue(s) %s, %d at once", name, ",".join(queues), concurrency)
    try:
        make_app(settings, worker).worker_main(
            [
                "worker", f"--concurrency={concurrency}",  # the pool: the app's worker_pool
                f"--queues={','.join(queues)}", f"--hostname={name}@%h",
                "--without-mingle", "--without-gossip", "--without-heartbeat",
                "--loglevel=INFO",
            ]
        )  # fmt: skip
    finally:
        worker.stop()
        db.dispose()
    return 0
