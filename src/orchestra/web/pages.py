"""The dashboard's pages under /ui/: each reads or changes through the Service, then renders.

Changes are HTML forms posted to the server (they work without JavaScript) and answered with
a redirect to the page that shows the result. Pages that change by themselves (an install, a
running task, the task list) are re-rendered in part: ``?partial=1`` answers just the part,
after waiting up to ``?wait=`` seconds for a task to end.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from flask import (
    Blueprint,
    Response,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from orchestra.edge import files, inputs
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput, NotFound, Unauthorized
from orchestra.manifest import parse_manifest
from orchestra.records import ModuleInfo, TaskInfo
from orchestra.tasks.status import TaskStatus
from orchestra.web import errors, guard, training
from orchestra.web.previews import IMAGE_TYPES, Preview, column_names, preview

_LOGGER = logging.getLogger(__name__)
bp = Blueprint(
    "web", __name__, url_prefix="/ui", template_folder="templates", static_folder="static"
)
bp.before_request(guard.check)
errors.init_blueprint(bp)
training.init_blueprint(bp)
PAGE_SIZE = 50  # tasks in one page of the task list
MODULE_TASKS = 20  # a module's latest tasks shown on its page
STATUSES = tuple(s.value for s in TaskStatus)
FINAL = frozenset(s.value for s in TaskStatus if s.is_final)


@bp.app_context_processor  # app-wide: error pages for unmatched /ui/ paths use it too
def _page_globals() -> dict[str, Any]:
    from orchestra.access.caller import current

    return {
        "token_set": service().access.tokens.enabled(), "signed_in": guard.signed_in(),
        "final_statuses": FINAL, "may": guard.may, "caller": current(),
    }  # fmt: skip


def _see(endpoint: str, **values: Any) -> BaseResponse:
    """A redirect after a change (303: the browser follows it with a GET)."""
    return redirect(url_for(endpoint, **values), code=303)


def _partial() -> bool:
    return request.args.get("partial") == "1"


# -- modules ------------------------------------------------------------------------------


@bp.get("/")
def modules() -> str:
    """Every module with its status."""
    return render_template("modules.html", modules=service().list_modules(everything=True))


def _run_fields(module: ModuleInfo) -> list[dict[str, Any]]:
    """The run form's inputs: each argument and hyperparameter with its type and default."""
    if module.status != "installed" or not module.metadata:
        return []
    manifest = parse_manifest(module.metadata)
    hyper = {param.name for param in manifest.hyperparameters}
    return [training.field(param, manifest.defaults.get(name), name in hyper)
            for name, param in manifest.inputs.items()]  # fmt: skip


@bp.get("/module/<module_id:module_id>")
def module(module_id: int) -> str:
    """One module: metadata, description, run form, install log, its latest tasks."""
    svc = service()
    info = svc.get_module(module_id)
    since = inputs.query_text("since")
    context = {
        "module": info,
        "fields": _run_fields(info),
        "tasks": svc.list_tasks(module=module_id, limit=MODULE_TASKS).tasks,
        "since": since,
        "updating": since is not None and info.updated.isoformat() == since,
        **training.module_context(info),
    }
    template = "module_main.html" if _partial() else "module.html"
    return render_template(template, **context)


@bp.post("/module/<module_id:module_id>/run")
def run(module_id: int) -> BaseResponse:
    """Start a task with the form's values (empty fields take their defaults)."""
    args = {name: value for name, value in inputs.form_fields() if value != ""}
    task = service().run(module_id, args)
    return _see("web.task", task_id=task.id)


def _uploaded_archive() -> Path | None:
    """The zip a form uploaded as ``file``, kept under a fresh name; None without one."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return None
    return files.save_upload(upload, service().settings.uploads_dir)


@bp.post("/module/<module_id:module_id>/update")
def update(module_id: int) -> BaseResponse:
    """Re-install in the background, from the source (at another ref) or a new zip."""
    archive = _uploaded_archive()
    try:
        before = service().update_in_background(
            module_id, ref=request.form.get("ref") or None, archive=archive
        )
    except BaseException:
        if archive is not None:
            archive.unlink(missing_ok=True)
        raise
    # the page follows the module until its record changes (the new version, or why not)
    return _see("web.module", module_id=module_id, since=before.updated.isoformat())


@bp.post("/module/<module_id:module_id>/publish")
def publish(module_id: int) -> BaseResponse:
    """Show a staged module to clients."""
    service().publish(module_id)
    return _see("web.module", module_id=module_id)


@bp.post("/module/<module_id:module_id>/stage")
def stage(module_id: int) -> BaseResponse:
    """Hide a module from clients' lists again."""
    service().stage(module_id)
    return _see("web.module", module_id=module_id)


@bp.post("/module/<module_id:module_id>/remove")
def remove(module_id: int) -> BaseResponse:
    """Remove a module (``force`` kills its tasks; ``purge`` forgets them too)."""
    form = request.form
    service().remove(module_id, force=form.get("force") == "1", purge=form.get("purge") == "1")
    return _see("web.modules")


@bp.get("/register")
def register() -> str:
    """The form: a git URL (with ref and sub-folder) or a zip archive, and the optional choices."""
    return _register_page()


def _register_page(posted: str | None = None, error: InvalidInput | None = None) -> str:
    """The register page; after a refused form, that form again as sent, with the reason."""
    return render_template(
        "register.html", pythons=service().pythons(), posted=posted, values=request.form,
        error=error,
    )  # fmt: skip


@bp.post("/register")
def register_post() -> BaseResponse | tuple[str, int]:
    """Accept a registration; the module's page then shows the install's progress."""
    archive = _uploaded_archive()
    try:
        info = _register(archive)
    except InvalidInput as exc:
        # nothing was registered: the operator corrects the field the message names
        return _register_page("zip" if archive else "git", exc), exc.http_status
    return _see("web.module", module_id=info.id)


def _register(archive: Path | None) -> ModuleInfo:
    """Register from the zip, else the form's source; empty fields are not given."""
    begin = partial(
        service().register_in_background,
        subdir=_optional("subdir"), staged=request.form.get("staged") == "1",
        # what the module may not declare, checked by the service as for the API
        as_of=_optional("as_of"), python=_optional("python_version"),
    )  # fmt: skip
    if archive is not None:
        try:
            return begin(archive=archive)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
    source = _optional("source")
    if source is None:
        raise InvalidInput("give a git URL or folder, or choose a zip archive", key="source")
    return begin(source, ref=_optional("ref"))


def _optional(name: str) -> str | None:
    """A text field of the posted form, None when left empty (or blank)."""
    return (request.form.get(name) or "").strip() or None


# -- tasks --------------------------------------------------------------------------------


@bp.get("/tasks")
def tasks() -> str:
    """Tasks newest first, filtered by status, module, submitter and user, paged by cursor."""
    status = inputs.query_text("status")
    module_id = inputs.query_int("module", 0, minimum=0) or None
    submitted_by, user = inputs.query_text("submitted_by"), inputs.query_text("user")
    svc = service()
    page = svc.list_tasks(
        status=status, module=module_id, limit=PAGE_SIZE, cursor=inputs.query_text("cursor"),
        submitted_by=submitted_by, user=user,
    )  # fmt: skip
    names = {m.id: m.name for m in svc.list_modules(everything=True)}
    context = {"page": page, "names": names, "status": status, "module_id": module_id,
               "submitted_by": submitted_by, "user": user}  # fmt: skip
    if _partial():
        return render_template("task_rows.html", **context)
    return render_template("tasks.html", statuses=STATUSES, **context)


def _previews(task: TaskInfo, owner: ModuleInfo | None) -> list[Preview]:
    if task.status != "done":
        return []
    kind = owner.output_type if owner else None
    names = column_names(kind, (owner.metadata or {}).get("output") if owner else None)
    return [preview(name, path, kind, names) for name, path in service().task_outputs(task.id)]


def _module_or_none(module_id: int) -> ModuleInfo | None:
    try:
        return service().get_module(module_id)
    except NotFound:
        return None  # removed since: the task's record stays


@bp.get("/task/<task_id:task_id>")
def task(task_id: int) -> str:
    """One task: arguments, times, status, log, error, outputs with previews."""
    svc = service()
    info = svc.get_task(task_id, wait=inputs.query_wait() if _partial() else 0.0)
    owner = _module_or_none(info.module)
    context = {
        "task": info,
        "owner": owner,
        "log": svc.task_log(task_id),
        "previews": _previews(info, owner),
    }
    return render_template("task_main.html" if _partial() else "task.html", **context)


@bp.get("/task/<task_id:task_id>/log")
def task_log(task_id: int) -> Response:
    """Standard output and standard error so far, for the page's live log."""
    return jsonify(service().task_log(task_id))


@bp.post("/task/<task_id:task_id>/kill")
def kill(task_id: int) -> BaseResponse:
    """Stop a task's whole process tree, or drop it from the queue."""
    service().kill(task_id)
    return _see("web.task", task_id=task_id)


@bp.get("/task/<task_id:task_id>/output")
def output(task_id: int) -> Response:
    """Every output file: the file itself when there is one, else a zip of them all."""
    return files.task_output(task_id)


@bp.get("/task/<task_id:task_id>/output/<path:name>")
def output_file(task_id: int, name: str) -> Response:
    """One output file, as a download, or inline when it is a raster image (``?inline=1``)."""
    if request.args.get("inline") == "1":
        return _inline_image(task_id, name)
    return files.task_output_file(task_id, name)


def _inline_image(task_id: int, name: str) -> Response:
    mimetype = IMAGE_TYPES.get(PurePosixPath(name).suffix.lower())
    if mimetype is None:  # only raster images: an SVG or HTML page could carry script
        raise InvalidInput(f"{name[:100]!r} is not an image that can be shown", key="name")
    return send_file(service().task_output_file(task_id, name), mimetype=mimetype, max_age=0)


# -- the machine, the audit log and signing in ---------------------------------------------


@bp.get("/audit")
def audit() -> str:
    """The audit log, newest first, filtered by who and action (admins only)."""
    who, action = inputs.query_text("who"), inputs.query_text("action")
    page = service().audit_log(
        who=who, action=action, limit=PAGE_SIZE, cursor=inputs.query_text("cursor")
    )
    return render_template("audit.html", page=page, who=who, action=action)


@bp.get("/machine")
def machine() -> str:
    """Free disk, environments and their sizes, the installer cache, the task load."""
    return render_template("machine.html", machine=service().machine())


def _next_page() -> str:
    target = request.values.get("next") or ""
    # only a page of this site: "//host" or "/\\host" would leave it
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return url_for("web.modules")


@bp.get("/signin")
def signin() -> str:
    """The sign-in form."""
    return render_template("signin.html", next=_next_page(), failed=False)


@bp.post("/signin")
def signin_post() -> BaseResponse | tuple[str, int]:
    """Check the token; keep a value derived from it in an HttpOnly, SameSite=Strict cookie."""
    from orchestra.access.tokens import session_value

    tokens = service().access.tokens
    given = request.form.get("token", "").strip()
    try:
        if not tokens.enabled() or not given:
            raise Unauthorized("no token given")
        tokens.identify(given)
    except Unauthorized:
        return render_template("signin.html", next=_next_page(), failed=True), 401
    response = redirect(_next_page(), code=303)
    response.set_cookie(
        guard.COOKIE, session_value(given), httponly=True, samesite="Strict",
        secure=request.is_secure, path="/",
    )  # fmt: skip
    return response


@bp.post("/signout")
def signout() -> BaseResponse:
    """Forget the cookie."""
    response = _see("web.modules")
    response.delete_cookie(guard.COOKIE, path="/", samesite="Strict", httponly=True)
    return response
