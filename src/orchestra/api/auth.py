"""Bearer-token checks: changing requests need the token when one is set."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, request

from orchestra.errors import Unauthorized

_LOGGER = logging.getLogger(__name__)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MARK = "orchestra_changes_state"
_PRIVATE = "orchestra_needs_token"
F = TypeVar("F", bound=Callable[..., Any])


def changes_state(view: F) -> F:
    """Mark a view that changes something even when called with GET (old clients' forms)."""
    setattr(view, _MARK, True)
    return view


def for_workers(view: F) -> F:
    """Mark a view meant for workers: it needs the token even to read (module code)."""
    setattr(view, _PRIVATE, True)
    return view


def needs_token_view(view: Callable[..., Any] | None) -> bool:
    """True when ``view`` needs the token even for a read."""
    return bool(getattr(view, _PRIVATE, False))


def changes_state_view(view: Callable[..., Any] | None) -> bool:
    """True when ``view`` changes something even when called with GET."""
    return bool(getattr(view, _MARK, False))


def init_app(app: Flask, token: str, *, protect_reads: bool) -> None:
    """Check the bearer token before every request that needs it."""
    if not token:
        return

    def check() -> None:
        if protect_reads or _is_change():
            _require(token)

    app.before_request(check)


def _is_change() -> bool:
    if request.method not in _READ_METHODS:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return changes_state_view(view) or needs_token_view(view)


def _require(token: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # compare bytes in constant time; a str compare_digest refuses non-ASCII input
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        _LOGGER.info("refused %s %s: missing or wrong token", request.method, request.path)
        raise Unauthorized("this request needs the header 'Authorization: Bearer <token>'")
