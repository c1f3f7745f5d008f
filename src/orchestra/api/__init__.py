"""The REST API: ``create_app()`` builds a Flask app around one Service; nothing at import."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service import Service

_LOGGER = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """A Flask app serving ``service`` (built from ``settings`` when not given)."""
    from orchestra.api import access, auth, errors, models, modules, routing, system, tasks, workers

    if service is None:
        from orchestra.config import load_settings
        from orchestra.service import Service

        service = Service(settings or load_settings())
    settings = service.settings
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["orchestra"] = service
    errors.init_app(app)
    routing.init_app(app)
    auth.init_app(app, service.access.tokens, protect_reads=settings.protect_reads)
    for blueprint in (modules.bp, tasks.bp, models.bp, system.bp, workers.bp, access.bp):
        app.register_blueprint(blueprint)
    from orchestra import web

    web.init_app(app)
    return app
