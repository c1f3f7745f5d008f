"""Tasks: list, show (optionally waiting), output, log, kill, forget."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path, PurePosixPath

from flask import Blueprint, Response, jsonify, send_file

from orchestra import zipstream
from orchestra.api import inputs
from orchestra.api.auth import changes_state
from orchestra.api.routing import both_forms
from orchestra.api.routing import current_service as service
from orchestra.errors import InvalidInput, NotFound
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


def task_output(task_id: int) -> Response:
    """The output file itself when there is one, a zip of all of them when there are several."""
    if _wants_votable():
        return _send_votable(*service().task_votable(task_id))
    files = service().task_outputs(task_id)
    if not files:
        raise NotFound(f"task {task_id} wrote no output files")
    if len(files) == 1:
        name, path = files[0]
        return _send(path, name)
    response = Response(zipstream.stream(files), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="task-{task_id}-output.zip"'
    return response


def task_output_file(task_id: int, name: str) -> Response:
    """One output file by its name inside the output folder."""
    if _wants_votable():
        return _send_votable(*service().task_votable(task_id, name))
    return _send(service().task_output_file(task_id, name), name)


def _wants_votable() -> bool:
    """``?format=votable``: a catalog or time table as an IVOA VOTable instead of text."""
    wanted = inputs.query_text("format")
    if wanted is None:
        return False
    if wanted.lower() != "votable":
        raise InvalidInput(f"format: {wanted[:100]!r} is not known (only 'votable')", key="format")
    return True


def _send_votable(download_name: str, data: bytes) -> Response:
    response = Response(data, mimetype="application/x-votable+xml")
    response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return response


def _send(path: Path, name: str) -> Response:
    download_name = PurePosixPath(name).name or path.name
    mimetype = mimetypes.guess_type(download_name)[0] or "application/octet-stream"
    return send_file(
        path, mimetype=mimetype, as_attachment=True, download_name=download_name, max_age=0
    )


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
