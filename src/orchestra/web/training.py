"""The dashboard's trainings and model versions: versions with their metrics as
columns, a train form with typed hyperparameters, alias moves, and a training's curves."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from orchestra.edge import inputs
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput
from orchestra.manifest import Param, parse_manifest
from orchestra.records import ModuleInfo


def field(param: Param, default: Any, hyper: bool) -> dict[str, Any]:
    """One input of a form: its name, type, default and whether it is a hyperparameter."""
    shown = "" if default is None else default
    if isinstance(default, bool):
        shown = "true" if default else "false"
    return {"name": param.name, "type": param.type or "str", "default": shown, "hyper": hyper}


def module_context(module: ModuleInfo) -> dict[str, Any]:
    """What a trainable module's page shows of its versions; nothing for other modules."""
    if not module.metadata or module.status not in ("installed", "removed"):
        return {"trainable": False}
    train = parse_manifest(module.metadata).train
    if train is None:
        return {"trainable": False}
    svc = service()
    versions = svc.list_models(module.id)
    hyper = {param.name for param in train.hyperparameters}
    fields = [field(param, train.defaults.get(name), name in hyper)
              for name, param in train.inputs.items()]  # fmt: skip
    return {
        "trainable": True,
        "versions": versions,
        "metric_names": sorted({name for v in versions for name in v.metrics or {}}),
        "aliases": svc.aliases(module.id).aliases,
        "train_fields": fields,
    }


def _see(endpoint: str, **values: Any) -> BaseResponse:
    return redirect(url_for(endpoint, **values), code=303)


def train(module_id: int) -> BaseResponse:
    """Start a training with the form's values (empty fields take their defaults)."""
    args = {name: value for name, value in inputs.form_fields() if value != ""}
    task = service().train(module_id, args)
    return _see("web.task", task_id=task.id)


def move_alias(module_id: int) -> BaseResponse:
    """Point an alias at the version the form names."""
    number = request.form.get("version", "")
    if not (number.isascii() and number.isdigit() and len(number) <= 10):
        raise InvalidInput("version: choose a version number", key="version")
    service().move_alias(module_id, request.form.get("name", ""), int(number))
    return _see("web.module", module_id=module_id, _anchor="versions")


def task_metrics(task_id: int) -> Response:
    """A training's metrics so far, for the page's live curves."""
    return jsonify(service().task_metrics(task_id))


def init_blueprint(bp: Blueprint) -> None:
    """Add these pages' routes to the dashboard's blueprint."""
    bp.add_url_rule("/module/<module_id:module_id>/train", view_func=train, methods=["POST"])
    bp.add_url_rule("/module/<module_id:module_id>/alias", view_func=move_alias, methods=["POST"])
    bp.add_url_rule("/task/<task_id:task_id>/metrics", view_func=task_metrics, methods=["GET"])
