"""The one place where the dashboard's errors become pages."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template, request
from werkzeug.exceptions import HTTPException

from orchestra.errors import OrchestraError

_LOGGER = logging.getLogger(__name__)


def init_blueprint(bp: Blueprint) -> None:
    """Render every error raised by ``bp``'s pages as an HTML page with the right status."""
    bp.register_error_handler(OrchestraError, _orchestra_error)
    bp.register_error_handler(HTTPException, http_error_page)


def _page(status: int, message: str) -> tuple[str, int]:
    _LOGGER.info("dashboard %s %s answered %d: %s", request.method, request.path, status, message)
    return render_template("error.html", status=status, message=message), status


def _orchestra_error(exc: OrchestraError) -> tuple[str, int]:
    return _page(exc.http_status, exc.message)


def http_error_page(exc: HTTPException) -> tuple[str, int]:
    """An HTTP error (a bad form, or an unknown page under /ui/) as a page."""
    return _page(exc.code or 500, exc.description or exc.name)
