"""The one place where errors become JSON answers: ``{"error": "..."}`` with the right status."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from orchestra.errors import OrchestraError, disk_full, is_disk_full

_LOGGER = logging.getLogger(__name__)

# headers of a werkzeug answer worth keeping on the JSON one (405 names the allowed methods)
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


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
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, exc.description or exc.name)
    for key, value in exc.get_headers():
        if key in _KEPT_HEADERS:
            response.headers[key] = value
    return response


def _unexpected_error(exc: Exception) -> Response:
    if is_disk_full(exc):  # not a bug: an answer the client can act on (SPEC section 9)
        from orchestra.api.routing import current_service

        return _orchestra_error(disk_full(current_service().settings.home))
    # a bug or a failing dependency: keep the traceback in the log, not in the answer
    _LOGGER.exception("unexpected error while answering a request")
    return error_response(500, "internal server error")
