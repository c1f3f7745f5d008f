"""Security headers on every answer: no inline script, no framing, no sniffing."""

from __future__ import annotations

from flask import Flask, Response, request

# nothing from another host, and no inline script or style: what a module author writes
# can reach a page only as escaped text, and even a slip could not run
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on its own elements; its scripts are still files only
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _add(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", DOCS_CSP if _is_docs() else CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _is_docs() -> bool:
    return request.path == "/docs" or request.path.startswith("/docs/")


def init_app(app: Flask) -> None:
    """Add the headers to every answer of ``app``."""
    app.after_request(_add)
