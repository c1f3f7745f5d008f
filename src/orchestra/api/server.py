"""Serve the API with waitress (a production WSGI server) and the task runner alongside."""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
import logging
import resource
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from waitress import wasyncore
from waitress.server import create_server

from orchestra.api.parking import ParkingDispatcher
from orchestra.app import create_app
from orchestra.edge.auth import header_allows
from orchestra.errors import InvalidInput

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service import Service

_LOGGER = logging.getLogger(__name__)
_POLL = 0.5  # seconds the loop sleeps between checks of the stop flag
_OUTBUF_IN_MEMORY = 16 * 1024 * 1024  # bytes of an answer buffered before a temporary file
_MAX_CONNECTIONS = 10_000  # connections open at once, at most (each one file descriptor)
_MIN_CONNECTIONS = 100  # waitress's own default, kept even under a tight open-files limit
_SPARE_FILES = 1024  # descriptors left for the database, logs, tasks' pipes


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: treat it as public


def check_listen_address(settings: Settings, *, tokens_exist: bool = False) -> None:
    """Refuse a non-loopback address without any token (§5), unless told it is insecure."""
    if is_loopback(settings.host) or settings.api_token or tokens_exist or settings.insecure:
        return
    raise InvalidInput(
        f"refusing to listen on {settings.host} without an API token: anyone who can reach it "
        "could install and run code; set ORCHESTRA_API_TOKEN, create one with "
        "`orchestra token create`, or pass --insecure",
        key="host",
    )


def _may_hold_tokens(settings: Settings) -> bool:
    """Whether the database may hold tokens: a SQLite file not made yet holds none."""
    return bool(settings.database_url) or (settings.home / "orchestra.db").exists()


class ApiServer:
    """A waitress server for one service; ``serve_forever`` until ``stop``."""

    def __init__(self, settings: Settings, service: Service) -> None:
        check_listen_address(settings, tokens_exist=service.access.tokens.enabled())
        self.service = service
        self._map: dict[Any, Any] = {}
        self._stopping = threading.Event()
        # a wait whose token may not read the task is answered at once, not parked
        admits = functools.partial(header_allows, service.access.tokens, endpoint="tasks.get_task")
        self.dispatcher = ParkingDispatcher(
            service.tasks, protect_reads=settings.protect_reads, admits=admits
        )
        self.dispatcher.set_thread_count(settings.threads)
        self._server = create_server(
            create_app(settings, service),
            map=self._map,
            _dispatcher=self.dispatcher,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            ident="orchestra",
            # waitress has its own body limit with a plain-text answer: keep it above ours
            # so that Flask's JSON 413 is the one clients see
            max_request_body_size=settings.max_upload + 1024 * 1024,
            # a streamed answer (a zip of outputs) is buffered in memory up to this, not in
            # a temporary file: the default (1 MB) wrote every byte of a download to disk
            outbuf_overflow=_OUTBUF_IN_MEMORY,
            # parked waiters hold connections, not threads: allow many (each loop below
            # uses poll(), since select() stops at descriptor 1,024)
            connection_limit=_connection_limit(),
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful when asked for port 0)."""
        return int(getattr(self._server, "effective_port", 0) or self._first_port())

    def _first_port(self) -> int:
        return int(next(iter(self._server.effective_listen))[1])  # type: ignore[attr-defined]

    def serve_forever(self) -> None:
        """Answer requests until ``stop()`` is called, then close every connection."""
        address = f"http://{self._server.effective_host}:{self.port}"
        _LOGGER.info("serving on %s", address)
        _LOGGER.info("dashboard: %s/ui/", address)
        try:
            while self._map and not self._stopping.is_set():
                wasyncore.loop(timeout=_POLL, map=self._map, use_poll=True, count=1)
        finally:
            self._close()

    def stop(self) -> None:
        """Ask the loop to end; safe from any thread and from a signal handler."""
        self._stopping.set()

    def _close(self) -> None:
        self._server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self._map)
        _LOGGER.info("server stopped")


def _connection_limit() -> int:
    """Connections served at once: as many as the open-files limit leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):  # raising the soft limit is allowed
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = _MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else soft - _SPARE_FILES
    return max(_MIN_CONNECTIONS, min(_MAX_CONNECTIONS, room))


def serve(settings: Settings, service: Service | None = None) -> int:
    """Run the API and the task runner until SIGTERM or SIGINT; returns the exit code."""
    if not _may_hold_tokens(settings):
        check_listen_address(settings)  # refused before anything is made in the data folder
    if service is None:
        from orchestra import preflight
        from orchestra.service import Service

        preflight.check(settings)  # one line and an exit code, not a traceback, if they refuse
        _LOGGER.info("data folder: %s", settings.with_overrides(url="").place())
        service = Service(settings)
    try:
        server = ApiServer(settings, service)
        service.start()
        _install_signal_handlers(server)
        # what start-up loaded lives as long as the server: keep the collector off it, so a
        # collection costs what the requests since the last one allocated, not the libraries
        gc.freeze()
        server.serve_forever()
    finally:
        service.close()
    return 0


def _install_signal_handlers(server: ApiServer) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        _LOGGER.info("received %s, stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
