"""Tokens and the audit log: admin only, as the rules table says."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, jsonify

from orchestra.access.caller import ANONYMOUS_NAME, current
from orchestra.edge import inputs
from orchestra.edge.routing import current_service as service
from orchestra.errors import Forbidden, InvalidInput
from orchestra.limits import MAX_PAGE

bp = Blueprint("access", __name__)


def create_token() -> tuple[Response, int]:
    """Make a token from ``{"name", "role", "expires"}`` (days); 201 with its secret.

    A server without any token refuses: a caller without one must not be able to turn
    tokens on and shut everyone else out. The first token is made on the server itself
    (``orchestra token create``) or comes from ORCHESTRA_API_TOKEN.
    """
    if current().role is not None and current().name == ANONYMOUS_NAME:
        raise Forbidden(
            "this server has no token yet: make the first one on the server "
            "(orchestra token create NAME --role admin) or set ORCHESTRA_API_TOKEN"
        )
    body = inputs.json_object("the token")
    unknown = sorted(set(body) - {"name", "role", "expires"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", key=unknown[0])
    name, role, expires = body.get("name"), body.get("role"), body.get("expires")
    if not isinstance(name, str):
        raise InvalidInput("name: a token name is required", key="name")
    if not isinstance(role, str):
        raise InvalidInput("role: one of read, run, operate, admin, worker is required", key="role")
    made = service().create_token(name, role=role, expires_days=expires)
    return jsonify(made.to_dict()), 201


def list_tokens() -> Response:
    """``{"tokens": [...]}``: names, roles, creation, last use, expiry; never a secret."""
    return jsonify({"tokens": [token.to_dict() for token in service().list_tokens()]})


def revoke_token(name: str) -> Response:
    """Revoke a token at once."""
    service().revoke_token(name)
    return Response(status=204)


def audit_log() -> Response:
    """Audit entries newest first; filters ``who``, ``action``, ``since``; paginated."""
    page = service().audit_log(
        who=inputs.query_text("who"),
        action=inputs.query_text("action"),
        since=_since(),
        limit=min(inputs.query_int("limit", 50, minimum=1), MAX_PAGE),
        offset=inputs.query_int("offset", 0),
        cursor=inputs.query_text("cursor"),
    )
    return jsonify(page.to_dict())


def _since() -> datetime | None:
    raw = inputs.query_text("since")
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"since: {raw[:60]!r} is not an ISO 8601 time", key="since") from None
    if moment.tzinfo is not None:  # stored as naive UTC
        from datetime import UTC

        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


bp.add_url_rule("/tokens", view_func=create_token, methods=["POST"])
bp.add_url_rule("/tokens", view_func=list_tokens, methods=["GET"])
bp.add_url_rule("/token/<name>", view_func=revoke_token, methods=["DELETE"])
bp.add_url_rule("/tokens/<name>", endpoint="revoke_token", view_func=revoke_token,
                methods=["DELETE"])  # fmt: skip
bp.add_url_rule("/audit", view_func=audit_log, methods=["GET"])
