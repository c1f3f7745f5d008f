"""Modules: list, register (from a source or a zip), show, update, publish, stage, remove, run."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.datastructures import FileStorage

from orchestra.edge import inputs
from orchestra.edge.auth import changes_state
from orchestra.edge.files import save_upload
from orchestra.edge.routing import both_forms
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput

_LOGGER = logging.getLogger(__name__)
bp = Blueprint("modules", __name__)
_SOURCE_KEYS = ("source", "ref", "subdir")
# what an operator supplies for a module that does not declare it
_CHOICE_KEYS = ("as_of", "python_version")


def accepted(body: dict[str, Any], location: str) -> Response:
    """202 with a body and a Location header."""
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = location
    return response


def list_modules() -> Response:
    """The modules clients see in their short form; ``?all=1`` adds staged and removed ones."""
    modules = service().list_modules(everything=inputs.query_bool("all"))
    return jsonify([module.to_dict() for module in modules])


def register_module() -> Response:
    """Accept a registration from a source or a zip upload; it installs in the background."""
    fields, upload, staged = _registration_request()
    svc = service()
    as_of, python = fields.get("as_of"), fields.get("python_version")
    if upload is None:
        info = svc.register_in_background(
            fields["source"], ref=fields.get("ref"), subdir=fields.get("subdir"), staged=staged,
            as_of=as_of, python=python,
        )  # fmt: skip
    else:
        archive = save_upload(upload, svc.settings.uploads_dir)
        try:
            info = svc.register_in_background(
                archive=archive,
                subdir=fields.get("subdir"),
                staged=staged,
                as_of=as_of,
                python=python,
            )
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
    location = url_for("modules.get_module", module_id=info.id)
    return accepted({"id": info.id, "status": info.status, "name": info.name}, location)


def _registration_request() -> tuple[dict[str, str], FileStorage | None, bool]:
    kind = inputs.body_kind()
    if kind == "none":
        raise InvalidInput("give a JSON object with 'source', or upload a zip as field 'file'")
    raw, upload = _fields_and_upload(kind, "a registration")
    staged = _flag(raw.pop("staged", None), "staged")
    fields = _source_fields(raw, _SOURCE_KEYS + _CHOICE_KEYS)
    if upload is not None and ("source" in fields or "ref" in fields):
        raise InvalidInput("give either a source or an uploaded zip, not both", key="file")
    if upload is None and "source" not in fields:
        raise InvalidInput(
            "missing 'source' (a folder or git URL) or uploaded 'file'", key="source"
        )
    return fields, upload, staged


def _fields_and_upload(kind: str, what: str) -> tuple[dict[str, Any], FileStorage | None]:
    """The body's fields (JSON or form) and the zip uploaded as ``file``, if any."""
    raw: dict[str, Any] = inputs.json_object(what) if kind == "json" else {}
    if kind == "form":
        pairs = inputs.form_fields()
        raw = dict(pairs)
        if len(raw) != len(pairs):
            raise InvalidInput(f"a field of {what} is given more than once", key="form")
    upload = request.files.get("file") if kind == "form" else None
    extra_files = set(request.files) - {"file"} if kind == "form" else set()
    if extra_files:
        raise InvalidInput(f"unexpected upload field(s): {', '.join(sorted(extra_files))}")
    return raw, upload


def _flag(value: Any, key: str) -> bool:
    """A yes/no field: JSON true/false, or 1/0/true/false as text."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise InvalidInput(f"{key}: must be true or false", key=key)


def _source_fields(raw: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        shown = ", ".join(repr(name[:100]) for name in unknown)
        raise InvalidInput(
            f"unknown field(s): {shown}; expected {', '.join(allowed)}", key=unknown[0]
        )
    fields: dict[str, str] = {}
    for key in allowed:
        value = raw.get(key)
        if value is None or (value == "" and key != "source"):
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{key}: must be a non-empty string", key=key)
        if "\x00" in value:
            raise InvalidInput(f"{key}: must not contain a NUL character", key=key)
        fields[key] = value
    return fields


def get_module(module_id: int) -> Response:
    """One module's full record."""
    return jsonify(service().get_module(module_id).to_dict())


def delete_module(module_id: int) -> Response:
    """Remove a module (``?force=1`` kills its tasks; ``?purge=1`` forgets them too)."""
    service().remove(module_id, force=inputs.query_bool("force"), purge=inputs.query_bool("purge"))
    return Response(status=204)


def update_module(module_id: int) -> Response:
    """Re-install from the recorded source (``{"ref": …}``) or a new zip (``file``): 202."""
    svc = service()
    kind = inputs.body_kind()
    raw, upload = _fields_and_upload(kind, "an update") if kind != "none" else ({}, None)
    ref = _source_fields(raw, ("ref",)).get("ref")
    if upload is None:
        info = svc.update_in_background(module_id, ref=ref)
    else:
        archive = save_upload(upload, svc.settings.uploads_dir)
        try:
            info = svc.update_in_background(module_id, ref=ref, archive=archive)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
    location = url_for("modules.get_module", module_id=info.id)
    return accepted({"id": info.id, "status": info.status, "name": info.name}, location)


def publish_module(module_id: int) -> Response:
    """Show a staged module in clients' list."""
    return jsonify(service().publish(module_id).to_dict())


def stage_module(module_id: int) -> Response:
    """Hide a module from clients' list (``?all=1`` and operators still see it)."""
    return jsonify(service().stage(module_id).to_dict())


@changes_state
def run_module(module_id: int) -> Response:
    """Start a task with the arguments of the query string, form fields or JSON body."""
    args = inputs.run_arguments()
    task = service().run(module_id, args)
    location = url_for("tasks.get_task", task_id=task.id)
    return accepted({"status": task.status, "task": task.id}, location)


bp.add_url_rule("/modules", view_func=list_modules, methods=["GET"])
bp.add_url_rule("/modules", view_func=register_module, methods=["POST"])
both_forms(bp, "/module/<module_id:module_id>", get_module, ["GET"])
both_forms(bp, "/module/<module_id:module_id>", delete_module, ["DELETE"])
both_forms(bp, "/module/<module_id:module_id>/run", run_module, ["GET", "POST"])
both_forms(bp, "/module/<module_id:module_id>/update", update_module, ["POST"])
both_forms(bp, "/module/<module_id:module_id>/publish", publish_module, ["POST"])
both_forms(bp, "/module/<module_id:module_id>/stage", stage_module, ["POST"])
