"""The server itself: liveness and the OpenAPI document."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify

from orchestra.api.openapi import build_document
from orchestra.edge.routing import current_service

_LOGGER = logging.getLogger(__name__)
bp = Blueprint("system", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness, version and counts."""
    return jsonify(current_service().health())


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of every route."""
    service = current_service()
    document = build_document(
        current_app,
        token=service.access.tokens.enabled(),
        protect_reads=service.settings.protect_reads,
    )
    return jsonify(document)
