"""The dashboard's own rule on top of the rules table: changes come from this very origin.

The sign-in page takes a token once and keeps a value derived from it in an HttpOnly,
SameSite=Strict cookie (``access.tokens.session_value``), which the rules table's check
accepts on the dashboard's routes. A cookie alone does not stop another port of the same host
(the same *site* for the browser), so every change must also come from this very origin, as
its ``Origin`` (or failing that ``Referer``) header says.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import request

from orchestra.access.caller import current
from orchestra.access.rules import rule_for
from orchestra.edge.auth import COOKIE
from orchestra.edge.routing import current_service
from orchestra.errors import Forbidden

__all__ = ["COOKIE", "check", "may", "same_origin", "signed_in"]
_LOGGER = logging.getLogger(__name__)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def signed_in() -> bool:
    """True when the request is made with a token (cookie or bearer)."""
    return current().role is not None and current_service().access.tokens.enabled()


def may(endpoint: str) -> bool:
    """True when the current caller may use ``endpoint`` (to offer only what it may)."""
    rule = rule_for(endpoint)
    if rule is None:
        return False
    role = current().role
    if role is None:
        return rule.anonymous != "never"
    return rule.allows(role)


def same_origin() -> bool:
    """True when the request's ``Origin`` (else ``Referer``) is this server's own origin."""
    expected = request.host_url.rstrip("/")
    origin = request.headers.get("Origin")
    if origin is None:
        referer = urlsplit(request.headers.get("Referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
    return origin == expected


def check() -> None:
    """Before each dashboard request: refuse changes sent from another origin."""
    if request.method not in _READS and not same_origin():
        _LOGGER.info("refused %s %s from another origin", request.method, request.path)
        raise Forbidden("refused: this change was sent from another site or port")
