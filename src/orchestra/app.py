"""The application factory: the REST API and the dashboard, put together on one Flask app.

Both sit on ``orchestra.edge`` (the request's service, arguments, callers and rules, errors,
files); neither imports the other. Nothing is built at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service import Service


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """A Flask app serving ``service`` (built from ``settings`` when not given)."""
    from orchestra import api, web
    from orchestra.edge import auth, errors, routing

    if service is None:
        from orchestra.config import load_settings
        from orchestra.service import Service

        service = Service(settings or load_settings())
    settings = service.settings
    # named as before the dashboard moved beside the API: its logger keeps that name
    app = Flask("orchestra.api", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["orchestra"] = service
    errors.init_app(app)
    routing.init_app(app)
    auth.init_app(app, service.access.tokens, protect_reads=settings.protect_reads)
    api.init_app(app)
    web.init_app(app)
    return app
