"""The worker's side of the API: fetch module packages, send outputs and log chunks.

Plain urllib (no extra dependency); every call carries the token, and the ones that change
something are retried with a growing pause, since the network between machines fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestra.artifacts import sha256_file

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = 30.0  # seconds one request may take
ATTEMPTS = 5  # tries of one call before it is given up
BACKOFF = 0.5  # seconds before the first retry, doubled after each
_CHUNK = 256 * 1024


class ApiError(Exception):
    """The API refused a request, or could not be reached after every retry."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Calls the API as worker ``worker``, with the shared token."""

    def __init__(self, base_url: str, token: str, worker: str) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.worker = worker

    def _request(
        self, method: str, path: str, *, data: Any = None, headers: dict[str, str] | None = None
    ) -> urllib.request.Request:
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("X-Orchestra-Worker", self.worker)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        return request

    def download_package(self, module_id: int, generation: str, target: Path) -> None:
        """Save a module generation's zip at ``target``, its checksum checked."""
        path = f"/module/{module_id}/package/{generation}"

        def attempt() -> None:
            with urllib.request.urlopen(self._request("GET", path), timeout=TIMEOUT) as answer:
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
                request = self._request(
                    "PUT", f"/task/{task_id}/output/{quoted}", data=body, headers=headers
                )
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                    answer.read()

        _retry(attempt, f"upload {name!r} of task {task_id}")

    def append_log(self, task_id: int, stream: str, offset: int, data: bytes) -> int:
        """Send a log chunk that starts at ``offset``; the log's size on the API."""
        path = f"/task/{task_id}/log/{stream}?offset={offset}"

        def attempt() -> int:
            headers = {"Content-Type": "application/octet-stream"}
            request = self._request("POST", path, data=data, headers=headers)
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                return int(json.loads(answer.read())["size"])

        return _retry(attempt, f"send the {stream} of task {task_id}", attempts=2)


def _retry(call: Callable[[], T], what: str, *, attempts: int = ATTEMPTS) -> T:
    """``call()``, tried again after network failures and 5xx answers; ApiError at the end."""
    pause = BACKOFF
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except urllib.error.HTTPError as exc:
            message = _error_text(exc)
            if exc.code < 500 or attempt == attempts:
                raise ApiError(f"could not {what}: {message}", exc.code) from exc
        except (OSError, ApiError) as exc:  # refused, reset, timed out, damaged
            if attempt == attempts:
                raise ApiError(f"could not {what}: {exc}") from exc
            message = str(exc)
        _LOGGER.warning("could not %s (attempt %d): %s", what, attempt, message)
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code}"
