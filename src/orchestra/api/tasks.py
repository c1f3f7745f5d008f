"""Tasks: list, show (optionally waiting), output, log, kill, forget."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from orchestra.edge import inputs
from orchestra.edge.auth import changes_state
from orchestra.edge.files import task_output, task_output_file
from orchestra.edge.routing import both_forms
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput
from orchestra.limits import MAX_PAGE

_LOGGER = logging.getLogger(__name__)
bp = Blueprint("tasks", __name__)


def list_tasks() -> Response:
    """Tasks newest first, filtered by status, module, submitter and user, one page at a time."""
    status = inputs.query_text("status")  # checked by the service, like every other filter
    module = inputs.query_int("module", 0, minimum=1) or None
    page = service().list_tasks(
        status=status,
        module=module,
        limit=min(inputs.query_int("limit", 50, minimum=1), MAX_PAGE),
        offset=inputs.query_int("offset", 0),
        cursor=inputs.query_text("cursor"),
        submitted_by=inputs.query_text("submitted_by"),
        user=inputs.query_text("user"),
    )
    return jsonify(page.to_dict())


def get_task(task_id: int) -> Response:
    """One task; ``?wait=SECONDS`` answers as soon as it is final (or the time is up)."""
    return jsonify(service().get_task(task_id, wait=inputs.query_wait()).to_dict())


def delete_task(task_id: int) -> Response:
    """Forget a finished task and its files."""
    service().delete_task(task_id)
    return Response(status=204)


@changes_state
def kill_task(task_id: int) -> Response:
    """Stop a task (its whole process tree) or drop it from the queue."""
    return jsonify(service().kill(task_id).to_dict())


def task_log(task_id: int) -> Response:
    """Standard output and standard error so far."""
    return jsonify(service().task_log(task_id))


def prune_tasks() -> Response:
    """Forget ended tasks older than ``?older_than=DAYS`` (default: the retention setting)."""
    raw = inputs.query_text("older_than") or ""
    try:
        days = float(raw) if raw else None
    except ValueError:
        shown = raw[:100]
        raise InvalidInput(
            f"older_than: {shown!r} is not a number of days", key="older_than"
        ) from None
    return jsonify(service().prune(days).to_dict())


bp.add_url_rule("/tasks", view_func=list_tasks, methods=["GET"])
bp.add_url_rule("/tasks/prune", view_func=prune_tasks, methods=["POST"])
both_forms(bp, "/task/<task_id:task_id>", get_task, ["GET"])
both_forms(bp, "/task/<task_id:task_id>", delete_task, ["DELETE"])
both_forms(bp, "/task/<task_id:task_id>/kill", kill_task, ["GET", "POST"])
both_forms(bp, "/task/<task_id:task_id>/log", task_log, ["GET"])
both_forms(bp, "/task/<task_id:task_id>/output", task_output, ["GET"])
both_forms(bp, "/task/<task_id:task_id>/output/<path:name>", task_output_file, ["GET"])
