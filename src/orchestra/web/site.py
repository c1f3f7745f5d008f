"""The site's own routes: ``/`` for browsers, ``/docs`` (Swagger UI), ``/metrics``."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, Response, abort, redirect, render_template, send_from_directory

from orchestra.web import guard, metrics

_LOGGER = logging.getLogger(__name__)
bp = Blueprint("site", __name__, template_folder="templates")
bp.before_request(guard.check)
_SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})


@bp.get("/")
def root() -> Response:
    """Send a browser to the dashboard."""
    return redirect("/ui/")  # type: ignore[return-value]


@bp.get("/docs")
def docs() -> str:
    """The OpenAPI document in Swagger UI, served from the ``swagger-ui-bundle`` package."""
    return render_template("docs.html")


@bp.get("/docs/<name>")
def swagger_file(name: str) -> Response:
    """One of Swagger UI's own files (a fixed list)."""
    if name not in _SWAGGER_FILES:
        abort(404)
    return send_from_directory(_swagger_folder(), name, max_age=3600)


def _swagger_folder() -> Path:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    return Path(swagger_ui_bundle.swagger_ui_path)


@bp.get("/metrics")
def metrics_text() -> Response:
    """Tasks by status, queue depth, task durations, registrations, request latencies."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
