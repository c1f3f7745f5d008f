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
_SELF_GUARDED = "orchestra_self_guarded"  # app.extensions key: blueprints checking themselves
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


def guards_itself(app: Flask, blueprint: str) -> None:
    """Leave ``blueprint``'s requests to its own check (the dashboard's sign-in cookie)."""
    app.extensions.setdefault(_SELF_GUARDED, set()).add(blueprint)


def init_app(app: Flask, token: str, *, protect_reads: bool) -> None:
    """Check the bearer token before every request that needs it."""
    if not token:
        return

    def check() -> None:
        if request.blueprint in app.extensions.get(_SELF_GUARDED, ()):
            return
        if protect_reads or _is_change():
            _require(token)

    app.before_request(check)


def _is_change() -> bool:
    if request.method not in _READ_METHODS:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return changes_state_view(view) or needs_token_view(view)


def token_matches(given: str, token: str) -> bool:
    """True when ``given`` is exactly ``token`` (compared in constant time)."""
    # compare bytes; a str compare_digest refuses non-ASCII input
    return hmac.compare_digest(given.encode(), token.encode())


def bearer_matches(token: str) -> bool:
    """True when the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), token)


def _require(token: str) -> None:
    if not bearer_matches(token):
        _LOGGER.info("refused %s %s: missing or wrong token", request.method, request.path)
        raise Unauthorized("this request needs the header 'Authorization: Bearer <token>'")
