"""The worker's side of the API: fetch module packages, send outputs and log chunks.

Plain http.client (no extra dependency); every call carries the token, and each is retried
with a growing pause, since the network between machines fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from orchestra.artifacts import sha256_file

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = 30.0  # seconds one request may take
ATTEMPTS = 5  # tries of one call before it is given up
BACKOFF = 0.5  # seconds before the first retry, doubled after each
_CHUNK = 256 * 1024
MAX_IDLE = 2  # connections kept open while no thread uses them


class ApiError(Exception):
    """The API refused a request, or could not be reached after every retry."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Calls the API as worker ``worker``, with the shared token.

    Connections are kept open (HTTP keep-alive) and shared by the worker's threads: a new
    connection for each request costs both sides more than the request itself, and an idle
    one still costs the API's event loop a look at every turn, so only a few are kept idle
    (a worker's threads talk to the API at their tasks' ends, rarely all at once).
    """

    def __init__(self, base_url: str, token: str, worker: str) -> None:
        parts = urllib.parse.urlsplit(base_url.rstrip("/"))
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path
        self.token = token
        self.worker = worker
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def check(self) -> dict[str, Any]:
        """The API's answer to a starting worker (version, executor); ApiError when refused."""

        def attempt() -> dict[str, Any]:
            with self._exchange("GET", "/worker/check") as answer:
                found = json.loads(answer.read())
            if not isinstance(found, dict) or "executor" not in found:
                raise ApiError("the answer is not an Orchestra API's", answer.status)
            return found

        return _retry(attempt, "reach the API", attempts=1)  # the caller waits and retries

    def download_package(self, module_id: int, generation: str, target: Path) -> None:
        """Save a module generation's zip at ``target``, its checksum checked."""
        path = f"/module/{module_id}/package/{generation}"

        def attempt() -> None:
            with self._exchange("GET", path) as answer:
                expected = answer.headers.get("X-Orchestra-Sha256", "")
                digest = hashlib.sha256()
                with open(target, "wb") as out:
                    while chunk := answer.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != expected:
                raise ApiError(f"package of module {module_id} arrived damaged (checksum)")

        _retry(attempt, f"download module {module_id}")

    def upload_output(self, task_id: int, name: str, path: Path) -> None:
        """Send one output file (streamed from disk); retried whole on failure."""
        quoted = urllib.parse.quote(name)
        digest = sha256_file(path)

        def attempt() -> None:
            size = path.stat().st_size
            with open(path, "rb") as body:
                headers = {
                    "X-Orchestra-Sha256": digest,
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                }
                with self._exchange("PUT", f"/task/{task_id}/output/{quoted}", body, headers):
                    pass

        _retry(attempt, f"upload {name!r} of task {task_id}")

    def download_model(self, module_id: int, version: int, target: Path) -> str:
        """Save a model version's zip at ``target``; the digest the API names for it."""
        path = f"/worker/model/{module_id}/{version}"

        def attempt() -> str:
            with self._exchange("GET", path) as answer, open(target, "wb") as out:
                while chunk := answer.read(_CHUNK):
                    out.write(chunk)
                return str(answer.headers.get("X-Orchestra-Digest", ""))

        return _retry(attempt, f"download version {version} of module {module_id}")

    def has_blob(self, sha: str) -> bool:
        """Whether the API's model store holds the file of that SHA-256 already."""

        def attempt() -> bool:
            try:
                with self._exchange("GET", f"/worker/blob/{sha}"):
                    return True
            except ApiError as exc:
                if exc.status == 404:
                    return False
                raise

        return _retry(attempt, f"ask for stored file {sha[:12]}")

    def upload_blob(self, sha: str, path: Path) -> None:
        """Send one file of a training's model folder (streamed); retried whole on failure."""

        def attempt() -> None:
            with open(path, "rb") as body:
                headers = {"Content-Length": str(path.stat().st_size),
                           "Content-Type": "application/octet-stream"}  # fmt: skip
                with self._exchange("PUT", f"/worker/blob/{sha}", body, headers):
                    pass

        _retry(attempt, f"send the model file {path.name!r}")

    def send_training(self, task_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Ask the API to make a training's version from the files sent; the version."""
        data = json.dumps(payload).encode()

        def attempt() -> dict[str, Any]:
            headers = {"Content-Type": "application/json"}
            with self._exchange("POST", f"/task/{task_id}/model", data, headers) as answer:
                return dict(json.loads(answer.read()))

        return _retry(attempt, f"make the version of task {task_id}")

    def append_log(self, task_id: int, stream: str, offset: int, data: bytes) -> int:
        """Send a log chunk that starts at ``offset``; the log's size on the API."""
        path = f"/task/{task_id}/log/{stream}?offset={offset}"

        def attempt() -> int:
            headers = {"Content-Type": "application/octet-stream"}
            with self._exchange("POST", path, data, headers) as answer:
                return int(json.loads(answer.read())["size"])

        return _retry(attempt, f"send the {stream} of task {task_id}", attempts=2)

    @contextlib.contextmanager
    def _exchange(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Iterator[http.client.HTTPResponse]:
        """Send a request on a kept connection; the answer, read to its end after.

        ApiError (with the status) for an answer that is not 2xx. A connection the server
        closed while it was idle is replaced at once, without counting as a failed try.
        """
        every = {"X-Orchestra-Worker": self.worker, **(headers or {})}
        if self.token:
            every["Authorization"] = f"Bearer {self.token}"
        path = self._prefix + path
        kept = self._take()
        connection = kept or self._connection()
        try:
            answer = self._send(connection, method, path, body, every)
        except (ConnectionError, http.client.HTTPException):
            if kept is None:
                raise
            if hasattr(body, "seek"):
                body.seek(0)
            connection = self._connection()
            answer = self._send(connection, method, path, body, every)
        try:
            if answer.status >= 300:
                raise ApiError(_error_text(answer), answer.status)
            yield answer
            answer.read()  # the rest, so that the connection can carry the next request
        except BaseException:
            connection.close()
            raise
        self._give_back(connection, reusable=not answer.will_close)

    @staticmethod
    def _send(
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
    ) -> http.client.HTTPResponse:
        try:
            connection.request(method, path, body=body, headers=headers)
            return connection.getresponse()
        except BaseException:
            connection.close()
            raise

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._netloc, timeout=TIMEOUT)

    def _take(self) -> http.client.HTTPConnection | None:
        """An idle kept connection, the last one given back first; None when none is idle."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, connection: http.client.HTTPConnection, *, reusable: bool) -> None:
        with self._lock:
            if reusable and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()


def _retry(call: Callable[[], T], what: str, *, attempts: int = ATTEMPTS) -> T:
    """``call()``, tried again after network failures and 5xx answers; ApiError at the end."""
    pause = BACKOFF
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (OSError, ApiError, http.client.HTTPException) as exc:  # refused, reset, damaged
            refused = isinstance(exc, ApiError) and exc.status is not None and exc.status < 500
            if refused or attempt == attempts:
                status = exc.status if isinstance(exc, ApiError) else None
                raise ApiError(f"could not {what}: {exc}", status) from exc
            message = str(exc)
        _LOGGER.warning("could not %s (attempt %d): %s", what, attempt, message)
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")


def _error_text(answer: http.client.HTTPResponse) -> str:
    try:
        return str(json.loads(answer.read())["error"])
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        return f"HTTP {answer.status}"
