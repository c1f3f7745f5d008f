"""Judging every request by the one table of rules (``access.rules``).

Before each request: find the route's rule (a route without one is refused), find who asks
(a bearer token; on the dashboard also its sign-in cookie), and let the request through when
the rule allows that caller. The caller is then current (``access.caller``) while the request
is served, so that the service records who submitted a task or made a change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, redirect, request, url_for
from werkzeug.wrappers import Response

from orchestra.access import audit
from orchestra.access.caller import ANONYMOUS_NAME, Caller, reset, set_current
from orchestra.access.roles import Role
from orchestra.access.rules import rule_for
from orchestra.errors import Forbidden, InvalidInput, OrchestraError, Unauthorized

if TYPE_CHECKING:
    from orchestra.access.roles import Rule
    from orchestra.access.tokens import TokenStore

_LOGGER = logging.getLogger(__name__)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MARK = "orchestra_changes_state"
_PRIVATE = "orchestra_needs_token"
_COOKIE_BLUEPRINTS = "orchestra_cookie_blueprints"  # app.extensions key: the dashboard's
_CALLER_MARK = "orchestra_caller_mark"
USER_HEADER = "X-Orchestra-User"
COOKIE = "orchestra_session"
MAX_USER = 200  # characters of an end user's name
F = TypeVar("F", bound=Callable[..., Any])


def changes_state(view: F) -> F:
    """Mark a view that changes something even when called with GET (old clients' forms)."""
    setattr(view, _MARK, True)
    return view


def for_workers(view: F) -> F:
    """Mark a view meant for workers (the rules table gives it the ``worker`` role)."""
    setattr(view, _PRIVATE, True)
    return view


def needs_token_view(view: Callable[..., Any] | None) -> bool:
    """True when ``view`` is meant for workers."""
    return bool(getattr(view, _PRIVATE, False))


def changes_state_view(view: Callable[..., Any] | None) -> bool:
    """True when ``view`` changes something even when called with GET."""
    return bool(getattr(view, _MARK, False))


def guards_itself(app: Flask, blueprint: str) -> None:
    """Let ``blueprint``'s requests sign in with the dashboard's cookie too (it checks origin)."""
    app.extensions.setdefault(_COOKIE_BLUEPRINTS, set()).add(blueprint)


def init_app(app: Flask, tokens: TokenStore, *, protect_reads: bool) -> None:
    """Judge every request by its route's rule; make its caller current while it is served."""

    def check() -> Response | None:
        caller, answer = _judge(tokens, protect_reads)
        setattr(request, _CALLER_MARK, set_current(caller))
        return answer

    def forget(_exc: BaseException | None) -> None:
        mark = getattr(request, _CALLER_MARK, None)
        if mark is not None:
            reset(mark)

    app.before_request(check)
    app.teardown_request(forget)


def _judge(tokens: TokenStore, protect_reads: bool) -> tuple[Caller, Response | None]:
    endpoint = request.endpoint
    if endpoint is None:  # no such route or method: routing answers 404 or 405
        return Caller(ANONYMOUS_NAME, None), None
    rule = rule_for(endpoint)
    if rule is None:
        _LOGGER.error("refused %s %s: endpoint %s has no access rule", request.method,
                      request.path, endpoint)  # fmt: skip
        raise Forbidden(f"refused: the route {endpoint} has no access rule")
    if rule.anonymous == "always":  # /health, sign-in: open whatever is sent
        return Caller(ANONYMOUS_NAME, None), None
    user = _user()
    if not tokens.enabled():  # no token anywhere: everyone may do everything
        return Caller(ANONYMOUS_NAME, Role.ADMIN, user), None
    caller = _identify(tokens, user)
    if caller is None:
        if rule.anonymous == "reads" and not protect_reads:
            return Caller(ANONYMOUS_NAME, None, user), None
        return Caller(ANONYMOUS_NAME, None, user), _sign_in_first()
    if caller.role is not None and not rule.allows(caller.role):
        _refuse(tokens, caller, rule)
    return caller, None


def _identify(tokens: TokenStore, user: str | None) -> Caller | None:
    """The caller a request's token stands for; None when it carries none."""
    header = request.headers.get("Authorization", "")
    if header:
        return tokens.identify(_bearer(header), user)
    cookie = request.cookies.get(COOKIE, "")
    if cookie and request.blueprint in current_app.extensions.get(_COOKIE_BLUEPRINTS, ()):
        return tokens.identify_session(cookie, user)
    return None


def _bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthorized for another form."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return given.strip()


def header_allows(tokens: TokenStore, header: str, endpoint: str) -> bool:
    """Whether an ``Authorization`` header names a live token that ``endpoint``'s rule allows.

    For a request judged before Flask sees it (a wait the server would park).
    """
    rule = rule_for(endpoint)
    try:
        caller = tokens.identify(_bearer(header))
    except OrchestraError:
        return False
    return rule is not None and caller.role is not None and rule.allows(caller.role)


def _sign_in_first() -> Response:
    """A dashboard page is sent to sign in; anything else is told it needs a token."""
    cookie_ok = request.blueprint in current_app.extensions.get(_COOKIE_BLUEPRINTS, ())
    if cookie_ok and request.method in _READ_METHODS:
        return redirect(url_for("web.signin", next=request.full_path))
    _LOGGER.info("refused %s %s: no token", request.method, request.path)
    raise Unauthorized("this request needs a token: 'Authorization: Bearer <token>'")


def _refuse(tokens: TokenStore, caller: Caller, rule: Rule) -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    if request.method not in _READ_METHODS or changes_state_view(view):
        audit.record_now(tokens.db, caller.name, "refused", f"{request.method} {request.path}",
                         audit.REFUSED, f"role {caller.role} needs {rule.needed}")  # fmt: skip
    _LOGGER.info("refused %s %s: role %s", request.method, request.path, caller.role)
    raise Forbidden(
        f"this request needs the role {rule.needed}: token {caller.name!r} has the role "
        f"{caller.role}"
    )


def _user() -> str | None:
    """The end user a caller acts for (``X-Orchestra-User``), checked; None without one."""
    raw = request.headers.get(USER_HEADER)
    if raw is None or raw == "":
        return None
    user = raw.strip()
    if not user or len(user) > MAX_USER or not user.isprintable():
        raise InvalidInput(
            f"{USER_HEADER}: {raw[:50]!r} is not a user name (printable, at most {MAX_USER})",
            key="user",
        )
    return user
