"""The one place where errors become JSON answers: ``{"error": "..."}`` with the right status."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from orchestra.errors import OrchestraError, disk_full, is_disk_full

_LOGGER = logging.getLogger(__name__)

# headers of a werkzeug answer worth keeping on the JSON one (405 names the allowed methods)
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
_PAGES = "orchestra_error_pages"  # app.extensions: (path prefix, renderer) pairs


def init_app(app: Flask) -> None:
    """Answer every error as JSON, whatever raised it."""
    app.register_error_handler(OrchestraError, _orchestra_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def error_response(status: int, message: str, **extra: object) -> Response:
    """A JSON error answer."""
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def _orchestra_error(exc: OrchestraError) -> Response:
    if exc.http_status >= 500:
        _LOGGER.error("request failed: %s", exc.message)
    response = jsonify(exc.to_dict())
    response.status_code = exc.http_status
    if exc.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="orchestra"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def pages_under(app: Flask, prefix: str, render: Callable[[HTTPException], Any]) -> None:
    """Let ``render`` answer the HTTP errors of paths under ``prefix`` (HTML for people)."""
    app.extensions.setdefault(_PAGES, []).append((prefix, render))


def _http_error(exc: HTTPException) -> Any:
    # a page URL that matched no route (or a bad id in one) is a person's: answer a page
    for prefix, render in current_app.extensions.get(_PAGES, ()):
        if request.path.startswith(prefix):
            return render(exc)
    status = exc.code or 500
    response = error_response(status, exc.description or exc.name)
    for key, value in exc.get_headers():
        if key in _KEPT_HEADERS:
            response.headers[key] = value
    return response


def _unexpected_error(exc: Exception) -> Response:
    if is_disk_full(exc):  # not a bug: an answer the client can act on
        from orchestra.edge.routing import current_service

        return _orchestra_error(disk_full(current_service().settings.home))
    # a bug or a failing dependency: keep the traceback in the log, not in the answer
    _LOGGER.exception("unexpected error while answering a request")
    return error_response(500, "internal server error")
