"""The site's own routes: ``/`` for browsers, ``/docs`` (Swagger UI), ``/metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    send_from_directory,
)

from orchestra.edge.routing import OPENAPI_DOCUMENT
from orchestra.web import guard, metrics

_LOGGER = logging.getLogger(__name__)
bp = Blueprint("site", __name__, template_folder="templates")
bp.before_request(guard.check)
_SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "LICENSE"})


@bp.get("/")
def root() -> Response:
    """Send a browser to the dashboard."""
    return redirect("/ui/")  # type: ignore[return-value]


@bp.get("/docs")
def docs() -> str:
    """The OpenAPI document in Swagger UI, from the files the ``flask-swagger-ui`` package ships."""
    return render_template("docs.html")


@bp.get("/docs/openapi.json")
def docs_document() -> Response:
    """The OpenAPI document for the docs page (signed in by cookie where reads need it)."""
    build: Callable[[], Response] = current_app.extensions[OPENAPI_DOCUMENT]  # the API offers it
    return build()


@bp.get("/docs/<name>")
def swagger_file(name: str) -> Response:
    """One of Swagger UI's own files (a fixed list)."""
    if name not in _SWAGGER_FILES:
        abort(404)
    return send_from_directory(_swagger_folder(), name, max_age=3600)


def _swagger_folder() -> Path:
    # only the files the package ships: its own blueprint's page has inline script
    from importlib.resources import files

    return Path(str(files("flask_swagger_ui") / "dist"))


@bp.get("/metrics", endpoint="metrics")
def metrics_text() -> Response:
    """Tasks by status, queue depth, task durations, registrations, request latencies."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
