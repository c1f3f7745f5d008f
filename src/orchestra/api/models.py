"""Training and model versions: train, versions, download, aliases, metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from orchestra import zipstream
from orchestra.api.modules import accepted
from orchestra.api.workers import WORKER_HEADER
from orchestra.edge import inputs
from orchestra.edge.auth import for_workers
from orchestra.edge.routing import both_forms
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput, NotFound
from orchestra.models.versions import MAX_VERSION

bp = Blueprint("models", __name__)
MAX_BLOB = 64 * 1024**3  # bytes: the largest file of a model a worker may send


def _number(text: str) -> int:
    """A version number from the path; a JSON 404 for anything else."""
    if text.isascii() and text.isdigit() and len(text) <= 10 and 0 < int(text) <= MAX_VERSION:
        return int(text)
    raise NotFound(f"no model version {text[:100]!r}")


def train_module(module_id: int) -> Response:
    """Start a training task: inputs as for a run, checked against ``train``; 202."""
    task = service().train(module_id, inputs.run_arguments())
    location = url_for("tasks.get_task", task_id=task.id)
    return accepted({"status": task.status, "task": task.id}, location)


def list_models(module_id: int) -> Response:
    """The module's versions, newest first."""
    return Response(service().models.list_models_json(module_id), mimetype="application/json")


def get_model(module_id: int, version: str) -> Response:
    """One version's record."""
    return jsonify(service().get_model(module_id, _number(version)).to_dict())


def delete_model(module_id: int, version: str) -> Response:
    """Delete a version that no alias points at and no queued or running task uses."""
    service().delete_model(module_id, _number(version))
    return Response(status=204)


def download_model(module_id: int, version: str) -> Response:
    """The version's files as a zip; its digest in ``X-Orchestra-Digest``."""
    record, files = service().model_files(module_id, _number(version))
    # each file deflated only when it compresses: trained weights hardly do, and deflating
    # them would cost seconds of the server's CPU per download (a worker's first use)
    response = Response(zipstream.stream(files), mimetype="application/zip")
    name = f"module-{module_id}-model-{record.version}.zip"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Orchestra-Digest"] = record.digest
    return response


def get_aliases(module_id: int) -> Response:
    """The aliases now and every move they made."""
    return jsonify(service().aliases(module_id).to_dict())


def put_alias(module_id: int, name: str) -> Response:
    """Point an alias at ``{"version": n}``."""
    body = inputs.json_object("an alias move")
    unknown = sorted(set(body) - {"version"})
    if unknown or "version" not in body:
        raise InvalidInput('give {"version": N}, the version the alias points at', key="version")
    return jsonify(service().move_alias(module_id, name, body["version"]).to_dict())


def delete_alias(module_id: int, name: str) -> Response:
    """Remove an alias (its removal is kept in the history)."""
    return jsonify(service().remove_alias(module_id, name).to_dict())


def task_metrics(task_id: int) -> Response:
    """A training's ``metrics.jsonl`` lines so far and its ``metrics.json``."""
    return jsonify(service().task_metrics(task_id))


# -- for workers ----------------------------------------------------------------


@for_workers
def worker_model(module_id: int, version: str) -> Response:
    """For workers: a version's files as a zip, its digest in ``X-Orchestra-Digest``."""
    return download_model(module_id, version)


@for_workers
def has_blob(sha: str) -> Response:
    """For workers: 200 when the store holds the file of that SHA-256, else 404."""
    if not service().models.has_blob(sha):
        raise NotFound(f"no stored file {sha[:64]}")
    return jsonify({"sha256": sha})


@for_workers
def receive_blob(sha: str) -> tuple[Response, int]:
    """For workers: one file of a training's model folder, streamed, kept if it hashes right."""
    request.max_content_length = MAX_BLOB
    size = service().models.receive_blob(sha, request.stream)
    return jsonify({"sha256": sha, "size": size}), 201


@for_workers
def receive_training(task_id: int) -> tuple[Response, int]:
    """For workers: make the version of a training whose files were all sent."""
    sent = inputs.json_object("a training's model")
    worker = request.headers.get(WORKER_HEADER)
    version = service().models.receive_training(task_id, sent, worker=worker)
    return jsonify(version.to_dict()), 201


both_forms(bp, "/module/<module_id:module_id>/train", train_module, ["POST"])
both_forms(bp, "/module/<module_id:module_id>/models", list_models, ["GET"])
both_forms(bp, "/module/<module_id:module_id>/model/<version>", get_model, ["GET"])
both_forms(bp, "/module/<module_id:module_id>/model/<version>", delete_model, ["DELETE"])
both_forms(bp, "/module/<module_id:module_id>/model/<version>/download", download_model, ["GET"])
both_forms(bp, "/module/<module_id:module_id>/aliases", get_aliases, ["GET"])
both_forms(bp, "/module/<module_id:module_id>/alias/<name>", put_alias, ["PUT"])
both_forms(bp, "/module/<module_id:module_id>/alias/<name>", delete_alias, ["DELETE"])
both_forms(bp, "/task/<task_id:task_id>/metrics", task_metrics, ["GET"])
both_forms(bp, "/worker/model/<module_id:module_id>/<version>", worker_model, ["GET"])
both_forms(bp, "/worker/blob/<sha>", has_blob, ["GET"])
both_forms(bp, "/worker/blob/<sha>", receive_blob, ["PUT"])
both_forms(bp, "/task/<task_id:task_id>/model", receive_training, ["POST"])
