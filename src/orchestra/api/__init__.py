"""The REST API: one blueprint per resource, added to the app by ``init_app``; nothing at import.

``orchestra.app.create_app`` builds the application with the dashboard beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the API's blueprints, and offer its OpenAPI document to the dashboard's /docs."""
    from orchestra.api import access, models, modules, system, tasks, workers
    from orchestra.edge.routing import OPENAPI_DOCUMENT

    for blueprint in (modules.bp, tasks.bp, models.bp, system.bp, workers.bp, access.bp):
        app.register_blueprint(blueprint)
    app.extensions[OPENAPI_DOCUMENT] = system.openapi
