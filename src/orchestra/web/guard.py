"""Who may change what from a browser: the sign-in cookie and the same-origin rule.

With ``ORCHESTRA_API_TOKEN`` set, the sign-in page takes the token once and keeps a value
derived from it in an HttpOnly, SameSite=Strict cookie. A cookie alone does not stop another
port of the same host (the same *site* for the browser), so every change must also come
from this very origin, as its ``Origin`` (or failing that ``Referer``) header says.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import urlsplit

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from orchestra.api.auth import bearer_matches, token_matches
from orchestra.api.routing import current_service
from orchestra.errors import Forbidden, Unauthorized

_LOGGER = logging.getLogger(__name__)
COOKIE = "orchestra_session"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_ENDPOINTS = frozenset({"web.signin", "web.signin_post", "web.static", "site.root"})


def session_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself never travels."""
    return hmac.new(token.encode(), b"orchestra dashboard session", hashlib.sha256).hexdigest()


def signed_in() -> bool:
    """True when no token is set, or the request carries the cookie or the bearer token."""
    token = current_service().settings.api_token
    if not token:
        return True
    cookie = request.cookies.get(COOKIE, "")
    return token_matches(cookie, session_value(token)) or bearer_matches(token)


def same_origin() -> bool:
    """True when the request's ``Origin`` (else ``Referer``) is this server's own origin."""
    expected = request.host_url.rstrip("/")
    origin = request.headers.get("Origin")
    if origin is None:
        referer = urlsplit(request.headers.get("Referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
    return origin == expected


def check() -> Response | None:
    """Before each dashboard request: refuse foreign changes, ask to sign in where needed."""
    changing = request.method not in _READS
    if changing and not same_origin():
        _LOGGER.info("refused %s %s from another origin", request.method, request.path)
        raise Forbidden("refused: this change was sent from another site or port")
    settings = current_service().settings
    if request.endpoint in _OPEN_ENDPOINTS or signed_in():
        return None
    if changing:
        raise Unauthorized("sign in first: changes need the API token")
    if settings.protect_reads:
        return redirect(url_for("web.signin", next=request.full_path))
    return None
