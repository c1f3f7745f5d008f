"""The OpenAPI 3.1 document, built from the app's url map so that it cannot drift from it.

Each endpoint's words (summary, query parameters, body, answers) live in ``OPERATIONS``;
paths, methods and path parameters come from the rules themselves. An endpoint without an
entry fails the build, and the tests check that no entry is left over.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask
from werkzeug.routing import Rule

from orchestra import __version__
from orchestra.access.rules import rule_for
from orchestra.edge.auth import changes_state_view
from orchestra.limits import MAX_ID

_LOGGER = logging.getLogger(__name__)
_ARG = re.compile(r"<(?:([a-z_]+)(?:\([^)]*\))?:)?([a-z_]+)>")
_SKIPPED_METHODS = {"HEAD", "OPTIONS"}
UNDOCUMENTED_PREFIXES = ("web.", "site.swagger_file")  # the dashboard's pages and static files


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(mimetype: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {mimetype: {"schema": {"type": "string"}}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_STRING_OR_NULL = {"type": ["string", "null"]}
# what an operator supplies for a module that does not declare it
_CHOICES = {
    "as_of": {"type": "string", "description": "YYYY-MM-DD or commit: install.resolve_as_of"},
    "python_version": {"type": "string", "description": "X.Y: install.python_version"},
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_SCALAR = {"type": ["string", "number", "integer", "boolean"]}
_TASK_STATUS = {"type": "string", "enum": ["queued", "running", "done", "error", "killed"]}
_MODULE_STATUS = {"type": "string", "description": "installing, installed, error or removed"}
_STAGED = {"type": "boolean", "description": "hidden from the module list until published"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "what went wrong, naming the problem"},
            "key": {"type": "string", "description": "the offending key or step"},
        },
    },
    "ModuleSummary": {
        "type": "object",
        "required": ["id", "name", "description", "version", "status", "output_type"],
        "properties": {
            "id": {"type": "integer"},
            "name": _STRING_OR_NULL,
            "description": {"type": "string"},
            "version": _STRING_OR_NULL,
            "status": _MODULE_STATUS,
            "output_type": _STRING_OR_NULL,
            "staged": _STAGED,
        },
    },
    "Module": {
        "type": "object",
        "description": "the module's metadata.json keys, then Orchestra's own",
        "required": ["id", "status", "source", "created"],
        "properties": {
            "id": {"type": "integer"},
            "name": _STRING_OR_NULL,
            "description": {"type": "string"},
            "version": _STRING_OR_NULL,
            "status": _MODULE_STATUS,
            "output_type": _STRING_OR_NULL,
            "source": {"type": "string"},
            "source_kind": {"type": "string"},
            "ref": _STRING_OR_NULL,
            "subdir": _STRING_OR_NULL,
            "commit": _STRING_OR_NULL,
            "python_version": _STRING_OR_NULL,
            "as_of": _STRING_OR_NULL,
            "python_requested": _STRING_OR_NULL,
            "created": {"type": "string", "format": "date-time"},
            "updated": {"type": "string", "format": "date-time"},
            "error": _STRING_OR_NULL,
            "install_log": {"type": "string"},
            "lock": {
                "type": ["object", "null"],
                "description": "the exact versions resolved at registration, which workers install",
                "properties": {
                    "python": _STRING_OR_NULL,
                    "packages": {"type": "array", "items": {"type": "string"}},
                },
            },
            "staged": _STAGED,
        },
    },
    "Registration": {
        "type": "object",
        "required": ["source"],
        "additionalProperties": False,
        "properties": {
            "source": {"type": "string", "description": "a folder path or git URL"},
            "ref": {"type": ["string", "null"], "description": "branch, tag or commit"},
            "subdir": {"type": ["string", "null"], "description": "folder holding metadata.json"},
            "staged": {"type": "boolean", "description": "hidden from the list until published"},
            **_CHOICES,
        },
    },
    "Upload": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a zip archive"},
            "subdir": {"type": "string"},
            "staged": {"type": "string", "enum": ["0", "1", "true", "false"]},
            **_CHOICES,
        },
    },
    "Update": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ref": {"type": ["string", "null"], "description": "branch, tag or commit to move to"}
        },
    },
    "UpdateUpload": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the new zip archive"}
        },
    },
    "RegistrationAccepted": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "integer"},
            "status": _MODULE_STATUS,
            "name": _STRING_OR_NULL,
        },
    },
    "RunArguments": {
        "type": "object",
        "description": "argument and hyperparameter values by name, and the request option"
        " fresh: true (run it again rather than reuse a deterministic module's earlier answer),"
        " which is not passed to the module",
        "additionalProperties": _SCALAR,
    },
    "RunAccepted": {
        "type": "object",
        "required": ["status", "task"],
        "properties": {"status": _TASK_STATUS, "task": {"type": "integer"}},
    },
    "OutputFile": {
        "type": "object",
        "required": ["name", "size"],
        "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
    },
    "Task": {
        "type": "object",
        "required": ["id", "module", "args", "status", "created"],
        "properties": {
            "id": {"type": "integer"},
            "module": {"type": "integer"},
            "args": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": _TASK_STATUS,
            "created": {"type": "string", "format": "date-time"},
            "started": _TIME,
            "finished": _TIME,
            "exit_code": {"type": ["integer", "null"]},
            "error": _STRING_OR_NULL,
            "output": {"type": ["array", "null"], "items": _ref("OutputFile")},
            "module_name": {
                "type": ["string", "null"],
                "description": "the module's name (kept after it was removed)",
            },
            "module_status": {
                "type": ["string", "null"],
                "description": "the module's status now: removed once it was removed",
            },
            "worker": {
                "type": ["string", "null"],
                "description": "the server process (host:pid) or the worker that ran it",
            },
            "submitted_by": {
                "type": "string",
                "description": "the token that submitted it (local: the server's command line)",
            },
            "user": {
                "type": ["string", "null"],
                "description": "the end user it was submitted for (X-Orchestra-User)",
            },
            "kind": {"type": "string", "enum": ["run", "train"]},
            "model": {
                "type": ["object", "null"],
                "description": "the model version given to it (a run's, or a training's base)",
                "properties": {"version": {"type": "integer"}, "digest": {"type": "string"}},
            },
            "trained": {
                "type": ["integer", "null"],
                "description": "the version a done training made",
            },
            "reused_from": {
                "type": ["integer", "null"],
                "description": "the earlier task of a deterministic module whose outputs"
                " answered this one (it never ran); a request with fresh=true runs anew",
            },
            "start": {
                "type": ["string", "null"],
                "enum": ["warm", "cold", None],
                "description": "whether its interpreter had already imported the module's stack"
                " (null while a worker's task runs, and when it never started)",
            },
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["name", "role"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"},
            "role": {"type": "string", "enum": ["read", "run", "operate", "admin", "worker"]},
            "expires": {"type": ["number", "null"], "description": "days until it expires"},
        },
    },
    "NewToken": {
        "type": "object",
        "required": ["name", "role", "token", "expires"],
        "properties": {
            "name": {"type": "string"},
            "role": {"type": "string"},
            "token": {"type": "string", "description": "the secret: shown this once only"},
            "expires": _TIME,
        },
    },
    "TokenList": {
        "type": "object",
        "required": ["tokens"],
        "properties": {
            "tokens": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"type": "string"},
                        "created": {"type": "string", "format": "date-time"},
                        "expires": _TIME,
                        "last_used": _TIME,
                    },
                },
            }
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["entries", "limit", "offset", "next_cursor"],
        "properties": {
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "at": {"type": "string", "format": "date-time"},
                        "who": {"type": "string"},
                        "action": {"type": "string"},
                        "object": {"type": "string"},
                        "outcome": {"type": "string", "enum": ["ok", "refused", "failed"]},
                        "detail": {"type": "string"},
                    },
                },
            },
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_cursor": _STRING_OR_NULL,
        },
    },
    "TaskPage": {
        "type": "object",
        "required": ["tasks", "total", "limit", "offset", "next_cursor"],
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_cursor": _STRING_OR_NULL,
        },
    },
    "Pruned": {
        "type": "object",
        "required": ["tasks", "modules", "older_than_days"],
        "properties": {
            "tasks": {"type": "integer", "description": "tasks forgotten"},
            "modules": {"type": "integer", "description": "removed modules left without tasks"},
            "older_than_days": {"type": "number"},
        },
    },
    "TrainArguments": {
        "type": "object",
        "description": "training inputs by name, and the options base (N or @alias) and promote",
        "additionalProperties": _SCALAR,
    },
    "ModelVersion": {
        "type": "object",
        "required": ["version", "module", "digest", "size", "files", "created", "aliases"],
        "properties": {
            "version": {"type": "integer"},
            "module": {"type": "integer"},
            "digest": {"type": "string", "description": "sha256: and 64 hex digits"},
            "size": {"type": "integer", "description": "bytes, all files together"},
            "files": {"type": "integer"},
            "created": {"type": "string", "format": "date-time"},
            "task": {"type": ["integer", "null"], "description": "the training task"},
            "generation": _STRING_OR_NULL,
            "commit": _STRING_OR_NULL,
            "args": {"type": "object", "additionalProperties": {"type": "string"}},
            "metrics": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
            "base": {"type": ["integer", "null"]},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "removed": {"type": "boolean", "description": "its files went with its module"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _ref("ModelVersion")}},
    },
    "Aliases": {
        "type": "object",
        "required": ["aliases", "history"],
        "properties": {
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
            "history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "alias": {"type": "string"},
                        "from": {"type": ["integer", "null"]},
                        "to": {"type": ["integer", "null"]},
                        "at": {"type": "string", "format": "date-time"},
                        "by": {"type": "string"},
                    },
                },
            },
        },
    },
    "AliasMove": {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {"version": {"type": "integer", "minimum": 1}},
    },
    "Metrics": {
        "type": "object",
        "required": ["steps", "final"],
        "properties": {
            "task": {"type": "integer"},
            "kind": {"type": "string"},
            "status": _TASK_STATUS,
            "steps": {"type": "array", "items": {"type": "object"}},
            "final": {"type": ["object", "null"]},
        },
    },
    "Log": {
        "type": "object",
        "required": ["stdout", "stderr"],
        "properties": {"stdout": {"type": "string"}, "stderr": {"type": "string"}},
    },
    "StoredOutput": {
        "type": "object",
        "required": ["name", "size", "sha256"],
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
        },
    },
    "LogSize": {
        "type": "object",
        "required": ["size"],
        "properties": {"size": {"type": "integer", "description": "the log's size in bytes"}},
    },
    "WorkerCheck": {
        "type": "object",
        "required": ["version", "executor"],
        "properties": {
            "version": {"type": "string", "description": "the API server's Orchestra version"},
            "executor": {"type": "string", "description": "where its tasks run: local or celery"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version"],
        "properties": {
            "status": {"type": "string"},
            "version": {"type": "string"},
            "modules": {"type": "integer"},
            "tasks": {"type": "object", "additionalProperties": {"type": "integer"}},
            "sandbox": {
                "type": "object",
                "description": "the task sandbox on this machine, and how each limit is held",
                "required": ["mode", "active", "detail"],
                "properties": {
                    "mode": {"type": "string", "enum": ["auto", "required", "off"]},
                    "active": {"type": "boolean"},
                    "detail": {"type": "string"},
                    "network": {"type": "string"},
                    "limits": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, required: bool, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": {"type": "string"},
        "description": description,
    }


_WORKER = _header("X-Orchestra-Worker", False, "the sending worker's name")
_FILE = {
    # the type is guessed from the file's name (a .json output is application/json)
    "description": "the file, or a zip of all output files when there are several",
    "content": {"*/*": {"schema": {}}},  # any bytes: a JSON output is served as JSON
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["votable"]},
    "description": "votable: a catalog or time table as an IVOA VOTable",
}
_RUN_BODY = {
    "required": False,
    "content": {
        "application/json": {"schema": _ref("RunArguments")},
        "application/x-www-form-urlencoded": {"schema": _ref("RunArguments")},
    },
}
_RUN_QUERY = {
    "name": "arguments",
    "in": "query",
    "required": False,
    "style": "form",
    "explode": True,
    "schema": _ref("RunArguments"),
    "description": "argument values as name=value pairs",
}

OPERATIONS: dict[str, dict[str, Any]] = {
    "modules.list_modules": {
        "summary": "List the modules (staged and removed ones only with all=1)",
        "parameters": [
            _query("all", {"type": "string", "enum": ["0", "1"]}, "add staged and removed modules")
        ],
        "responses": {
            "200": _json({"type": "array", "items": _ref("ModuleSummary")}, "the modules")
        },
    },
    "modules.register_module": {
        "summary": "Register a module from a source or a zip; it installs in the background",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("Registration")},
                "multipart/form-data": {"schema": _ref("Upload")},
            },
        },
        "responses": {
            "202": _json(_ref("RegistrationAccepted"), "accepted; poll the Location"),
            "409": _error("a module of that name exists"),
            "413": _error("the upload is too large"),
        },
    },
    "modules.get_module": {
        "summary": "Show a module",
        "responses": {"200": _json(_ref("Module"), "the module"), "404": _error("no such module")},
    },
    "modules.delete_module": {
        "summary": "Remove a module and its environment; its tasks stay unless purge=1",
        "parameters": [
            _query("force", {"type": "string", "enum": ["0", "1"]}, "kill its running tasks"),
            _query("purge", {"type": "string", "enum": ["0", "1"]}, "forget its tasks too"),
        ],
        "responses": {
            "204": {"description": "removed"},
            "404": _error("no such module"),
            "409": _error("the module has running tasks"),
        },
    },
    "modules.update_module": {
        "summary": "Re-install from the recorded source (ref) or a new zip, in the background",
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": _ref("Update")},
                "multipart/form-data": {"schema": _ref("UpdateUpload")},
            },
        },
        "responses": {
            "202": _json(_ref("RegistrationAccepted"), "accepted; poll the Location"),
            "404": _error("no such module"),
            "409": _error("being installed or updated, or removed"),
            "413": _error("the upload is too large"),
        },
    },
    "modules.publish_module": {
        "summary": "Show a staged module in the module list",
        "responses": {
            "200": _json(_ref("Module"), "the module"),
            "404": _error("no such module"),
            "409": _error("the module was removed"),
        },
    },
    "modules.stage_module": {
        "summary": "Hide a module from the module list (all=1 still shows it)",
        "responses": {
            "200": _json(_ref("Module"), "the module"),
            "404": _error("no such module"),
            "409": _error("the module was removed"),
        },
    },
    "modules.run_module": {
        "summary": "Start a task (GET is accepted for old clients)",
        "parameters": [_RUN_QUERY],
        "requestBody": _RUN_BODY,
        "responses": {
            "202": _json(_ref("RunAccepted"), "queued or started; poll the Location"),
            "404": _error("no such module"),
            "409": _error("the module is not installed"),
        },
    },
    "tasks.list_tasks": {
        "summary": "List tasks, newest first",
        "parameters": [
            _query("status", _TASK_STATUS, "only tasks in this status"),
            _query("module", {"type": "integer", "minimum": 1}, "only tasks of this module"),
            _query("submitted_by", {"type": "string"}, "only tasks submitted by this token"),
            _query("user", {"type": "string"}, "only tasks submitted for this end user"),
            _query("limit", {"type": "integer", "minimum": 1, "default": 50}, "page size (capped)"),
            _query("offset", {"type": "integer", "minimum": 0}, "tasks to skip"),
            _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
        ],
        "responses": {"200": _json(_ref("TaskPage"), "one page of tasks")},
    },
    "tasks.prune_tasks": {
        "summary": "Forget ended tasks older than a number of days, with their files",
        "parameters": [
            _query(
                "older_than",
                {"type": "number", "exclusiveMinimum": 0},
                "days since the task ended (default: ORCHESTRA_TASK_RETENTION_DAYS)",
            )
        ],
        "responses": {"200": _json(_ref("Pruned"), "what was forgotten")},
    },
    "tasks.get_task": {
        "summary": "Show a task",
        "parameters": [
            _query(
                "wait",
                {"type": "number", "minimum": 0, "maximum": 60},
                "seconds to wait for the end",
            )
        ],
        "responses": {"200": _json(_ref("Task"), "the task"), "404": _error("no such task")},
    },
    "tasks.delete_task": {
        "summary": "Forget a finished task and its files",
        "responses": {
            "204": {"description": "forgotten"},
            "404": _error("no such task"),
            "409": _error("the task has not finished"),
        },
    },
    "tasks.kill_task": {
        "summary": "Kill a task (GET is accepted for old clients)",
        "responses": {
            "200": _json(_ref("Task"), "the task, killed"),
            "404": _error("no such task"),
            "409": _error("the task has already finished"),
        },
    },
    "tasks.task_log": {
        "summary": "Standard output and standard error so far",
        "responses": {"200": _json(_ref("Log"), "the logs"), "404": _error("no such task")},
    },
    "tasks.task_output": {
        "summary": "The output: the file itself, or a zip of all files when there are several",
        "parameters": [_FORMAT],
        "responses": {
            "200": _FILE,
            "404": _error("no such task"),
            "409": _error("not done, or not one catalog or time table (format=votable)"),
        },
    },
    "tasks.task_output_file": {
        "summary": "One output file",
        "parameters": [_FORMAT],
        "responses": {
            "200": _FILE,
            "404": _error("no such task or file"),
            "409": _error("not done, or not a catalog or time table (format=votable)"),
        },
    },
    "models.train_module": {
        "summary": "Start a training task (inputs checked against train; base, promote)",
        "parameters": [_RUN_QUERY],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": _ref("TrainArguments")},
                "application/x-www-form-urlencoded": {"schema": _ref("TrainArguments")},
            },
        },
        "responses": {
            "202": _json(_ref("RunAccepted"), "queued or started; poll the Location"),
            "404": _error("no such module"),
            "409": _error("not installed, or declares no train"),
        },
    },
    "models.list_models": {
        "summary": "The module's model versions, newest first",
        "responses": {"200": _json(_ref("ModelList"), "the versions"), "404": _error("no module")},
    },
    "models.get_model": {
        "summary": "One model version",
        "responses": {
            "200": _json(_ref("ModelVersion"), "the version"),
            "404": _error("no such module or version"),
        },
    },
    "models.delete_model": {
        "summary": "Delete a version no alias points at and no queued or running task uses",
        "responses": {
            "204": {"description": "deleted"},
            "404": _error("no such module or version"),
            "409": _error("aliased, or used by a queued or running task"),
        },
    },
    "models.download_model": {
        "summary": "The version's files as a zip, its digest in X-Orchestra-Digest",
        "responses": {
            "200": {"description": "the zip", "content": {"application/zip": {"schema": {}}}},
            "404": _error("no such module or version, or its files are gone"),
        },
    },
    "models.get_aliases": {
        "summary": "The module's aliases and every move they made",
        "responses": {"200": _json(_ref("Aliases"), "the aliases"), "404": _error("no module")},
    },
    "models.put_alias": {
        "summary": "Move an alias to a version (made if new)",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("AliasMove")}},
        },
        "responses": {
            "200": _json(_ref("Aliases"), "the aliases after the move"),
            "404": _error("no such module or version"),
        },
    },
    "models.delete_alias": {
        "summary": "Remove an alias (kept in the history)",
        "responses": {
            "200": _json(_ref("Aliases"), "the aliases after the removal"),
            "404": _error("no such module or alias"),
        },
    },
    "models.task_metrics": {
        "summary": "A training's metrics.jsonl lines so far and its metrics.json (or null)",
        "responses": {"200": _json(_ref("Metrics"), "the figures"), "404": _error("no task")},
    },
    "models.worker_model": {
        "summary": "For workers: a version's files as a zip, its digest in X-Orchestra-Digest",
        "responses": {
            "200": {"description": "the zip", "content": {"application/zip": {"schema": {}}}},
            "404": _error("no such module or version"),
        },
    },
    "models.has_blob": {
        "summary": "For workers: whether the model store holds the file of that SHA-256",
        "responses": {"200": _json({"type": "object"}, "held"), "404": _error("not held")},
    },
    "models.receive_blob": {
        "summary": "For workers: one file of a training's model folder, checked by SHA-256",
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {}}},
        },
        "responses": {
            "201": _json({"type": "object"}, "kept"),
            "400": _error("its content does not hash to the SHA-256 named"),
        },
    },
    "models.receive_training": {
        "summary": "For workers: make a training's version once all its files were sent",
        "parameters": [_WORKER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": {
            "201": _json(_ref("ModelVersion"), "the version made"),
            "400": _error("a file missing, or the digest does not match"),
            "404": _error("no such task"),
            "409": _error("the task does not run (on this worker), or is not a training"),
        },
    },
    "workers.check_worker": {
        "summary": "For workers: whether the API takes this worker's token (asked at its start)",
        "parameters": [_WORKER],
        "responses": {"200": _json(_ref("WorkerCheck"), "the token is good")},
    },
    "workers.module_package": {
        "summary": "For workers: a zip of one generation of a module (code, metadata, lock)",
        "responses": {
            "200": {
                "description": "the zip; its SHA-256 in the X-Orchestra-Sha256 header",
                "content": {"application/zip": {"schema": {}}},
            },
            "404": _error("no such module or generation"),
        },
    },
    "workers.receive_output": {
        "summary": "For workers: store one output file of a running task",
        "parameters": [_header("X-Orchestra-Sha256", True, "the file's hex SHA-256"), _WORKER],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {}}},
        },
        "responses": {
            "201": _json(_ref("StoredOutput"), "stored"),
            "404": _error("no such task"),
            "409": _error("the task does not run (on this worker)"),
            "413": _error("the file is too large"),
        },
    },
    "workers.append_log": {
        "summary": "For workers: append a chunk to a running task's stdout or stderr log",
        "parameters": [
            _query("offset", {"type": "integer", "minimum": 0}, "where the chunk starts"),
            _WORKER,
        ],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {}}},
        },
        "responses": {
            "200": _json(_ref("LogSize"), "appended"),
            "404": _error("no such task or log"),
            "409": _error("the task does not run, or the chunk leaves a gap"),
        },
    },
    "access.create_token": {
        "summary": "Make a token with a role (admin); its secret is in this answer only",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("TokenRequest")}},
        },
        "responses": {
            "201": _json(_ref("NewToken"), "the token"),
            "403": _error("not an admin token, or a server without any token yet"),
            "409": _error("a token of that name exists"),
        },
    },
    "access.list_tokens": {
        "summary": "The tokens not revoked (admin): never a secret",
        "responses": {"200": _json(_ref("TokenList"), "the tokens")},
    },
    "access.revoke_token": {
        "summary": "Revoke a token at once (admin)",
        "responses": {"204": {"description": "revoked"}, "404": _error("no such token")},
    },
    "access.audit_log": {
        "summary": "The audit log, newest first (admin)",
        "parameters": [
            _query("who", {"type": "string"}, "a token's name, or local"),
            _query("action", {"type": "string"}, "e.g. module.register, token.revoke"),
            _query("since", {"type": "string", "format": "date-time"}, "entries from then on"),
            _query("limit", {"type": "integer", "minimum": 1}, "entries per page"),
            _query("offset", {"type": "integer", "minimum": 0}, "entries to skip"),
            _query("cursor", {"type": "string"}, "continue after a previous page"),
        ],
        "responses": {"200": _json(_ref("AuditPage"), "one page of entries")},
    },
    "system.health": {
        "summary": "Liveness, version and counts",
        "responses": {"200": _json(_ref("Health"), "the server is up")},
    },
    "system.openapi": {
        "summary": "This document",
        "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
    },
    "site.root": {
        "summary": "Send a browser to the dashboard (/ui/)",
        "responses": {"302": {"description": "redirect to /ui/"}},
    },
    "site.docs": {
        "summary": "This document, browsable (Swagger UI served by Orchestra itself)",
        "responses": {"200": _text("text/html", "the page")},
    },
    "site.docs_document": {
        "summary": "This document, as /docs reads it (with the dashboard's sign-in)",
        "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
    },
    "site.metrics": {
        "summary": "Operational figures in Prometheus' text format",
        "responses": {"200": _text("text/plain", "tasks, queue, durations, requests")},
    },
}


def is_documented(rule: Rule) -> bool:
    """False for static files and the dashboard's pages (HTML for people, not an API)."""
    return rule.endpoint != "static" and not rule.endpoint.startswith(UNDOCUMENTED_PREFIXES)


def openapi_path(rule: Rule) -> str:
    """A werkzeug rule as an OpenAPI path: ``/task/<task_id:task_id>`` → ``/task/{task_id}``."""
    return _ARG.sub(lambda match: "{" + match.group(2) + "}", rule.rule)


def build_document(app: Flask, *, token: bool, protect_reads: bool) -> dict[str, Any]:
    """The OpenAPI document for every rule of ``app`` (except static files)."""
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: dict[str, int] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not is_documented(rule):
            continue
        item = paths.setdefault(openapi_path(rule), {})
        for method in sorted((rule.methods or set()) - _SKIPPED_METHODS):
            operation = _operation(app, rule, method, token=token, protect_reads=protect_reads)
            count = seen_ids.get(operation["operationId"], 0)
            seen_ids[operation["operationId"]] = count + 1
            if count:
                operation["operationId"] += f"_{count + 1}"
            item[method.lower()] = operation
    return _document(paths, token=token)


def _document(paths: dict[str, Any], *, token: bool) -> dict[str, Any]:
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Orchestra",
            "version": __version__,
            "description": "Install machine-learning modules and run them as tasks.",
        },
        "paths": paths,
        "components": components,
    }


def _operation(
    app: Flask, rule: Rule, method: str, *, token: bool, protect_reads: bool
) -> dict[str, Any]:
    words = OPERATIONS.get(rule.endpoint)
    if words is None:
        raise LookupError(f"no OpenAPI description for endpoint {rule.endpoint!r}")
    operation: dict[str, Any] = {
        "operationId": f"{rule.endpoint.split('.')[-1]}_{method.lower()}",
        "summary": words["summary"],
        "parameters": _path_parameters(rule) + list(words.get("parameters", [])),
        "responses": {**words["responses"], "400": _error("bad input"), "500": _error("a bug")},
    }
    if method in {"POST", "PUT", "PATCH"} and "requestBody" in words:
        operation["requestBody"] = words["requestBody"]
    view = app.view_functions[rule.endpoint]
    changes = method not in {"GET", "HEAD"} or changes_state_view(view)
    access = rule_for(rule.endpoint)
    if token and access is not None and access.anonymous != "always":
        if access.anonymous == "never" or protect_reads:
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = _error("missing, unknown, revoked or expired token")
        operation["responses"]["403"] = _error(f"the token's role may not (needs {access.needed})")
    if changes:  # any write may meet a full disk, or ORCHESTRA_MIN_FREE_MB
        operation["responses"]["507"] = _error("no space left on the disk of the data folder")
    if method == "GET" and changes:
        operation["deprecated"] = True
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


def _path_parameters(rule: Rule) -> list[dict[str, Any]]:
    params = []
    for converter, name in _ARG.findall(rule.rule):
        if converter in {"module_id", "task_id"}:
            schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        else:
            schema = {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params
