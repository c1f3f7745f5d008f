"""What workers on other machines call: module packages, output uploads, log chunks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, send_file

from orchestra import __version__
from orchestra.edge import inputs
from orchestra.edge.auth import for_workers
from orchestra.edge.routing import both_forms
from orchestra.edge.routing import current_service as service

bp = Blueprint("workers", __name__)
WORKER_HEADER = "X-Orchestra-Worker"  # the name of the worker sending, checked against the task
SHA256_HEADER = "X-Orchestra-Sha256"  # the hex SHA-256 of a package or an uploaded file
MAX_OUTPUT_FILE = 64 * 1024**3  # bytes: the largest output file a worker may send


@for_workers
def check_worker() -> Response:
    """Answer a worker that starts: its token is good; the API's version and executor."""
    return jsonify({"version": __version__, "executor": service().settings.executor})


@for_workers
def module_package(module_id: int, generation: str) -> Response:
    """A zip of one generation of a module: code, metadata and lock; its SHA-256 in a header."""
    path, digest = service().module_package(module_id, generation)
    response = send_file(
        path, mimetype="application/zip", as_attachment=True,
        download_name=f"module-{module_id}-{generation}.zip", max_age=0,
    )  # fmt: skip
    response.headers[SHA256_HEADER] = digest
    return response


@for_workers
def receive_output(task_id: int, name: str) -> tuple[Response, int]:
    """Store one output file of a running task, streamed, checked against its SHA-256."""
    request.max_content_length = MAX_OUTPUT_FILE  # outputs may outgrow a registration upload
    stored = service().receive_output(
        task_id, name, request.stream, sha256=request.headers.get(SHA256_HEADER, "").lower(),
        worker=request.headers.get(WORKER_HEADER),
    )  # fmt: skip
    return jsonify(stored), 201


@for_workers
def append_log(task_id: int, stream: str) -> Response:
    """Append a chunk to a running task's stdout or stderr log, at ``?offset=`` bytes."""
    size = service().append_log(
        task_id, stream, offset=inputs.query_int("offset", 0), data=request.get_data(),
        worker=request.headers.get(WORKER_HEADER),
    )  # fmt: skip
    return jsonify({"size": size})


both_forms(bp, "/worker/check", check_worker, ["GET"])
both_forms(bp, "/module/<module_id:module_id>/package/<generation>", module_package, ["GET"])
both_forms(bp, "/task/<task_id:task_id>/output/<path:name>", receive_output, ["PUT"])
both_forms(bp, "/task/<task_id:task_id>/log/<stream>", append_log, ["POST"])
