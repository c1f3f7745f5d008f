"""The web dashboard: pages under /ui/, /docs, /metrics, and / sending browsers to /ui/."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Add the dashboard, its security headers, its sign-in check and the metrics to ``app``."""
    from orchestra.edge.auth import guards_itself
    from orchestra.edge.errors import pages_under
    from orchestra.web import errors, filters, headers, metrics, pages, site

    metrics.init_app(app)
    headers.init_app(app)
    filters.init_app(app)
    for blueprint in (pages.bp, site.bp):
        guards_itself(app, blueprint.name)
        app.register_blueprint(blueprint)
    pages_under(app, "/ui/", errors.http_error_page)
