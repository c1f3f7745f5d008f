"""Routing: id converters that answer JSON 404s, and rules served in both spellings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app
from werkzeug.exceptions import NotFound as HttpNotFound
from werkzeug.routing import BaseConverter

from orchestra.limits import MAX_ID

if TYPE_CHECKING:
    from orchestra.service import Service

_MAX_ID_DIGITS = len(str(MAX_ID))
# app.extensions key of the function that builds the OpenAPI document: the API offers it,
# the dashboard's /docs page serves it, and neither imports the other for it
OPENAPI_DOCUMENT = "orchestra.openapi"


class _IdConverter(BaseConverter):
    """Any path segment; a valid positive database id or a JSON 404 naming the kind."""

    regex = "[^/]+"
    kind = "id"

    def to_python(self, value: str) -> int:
        # werkzeug's int converter would not match negatives or huge numbers, which then
        # fall through to a routing 404 without saying what was wrong; and int() of a very
        # long digit string raises ValueError, so the length is checked first
        if (
            value.isascii()
            and value.isdigit()
            and len(value) <= _MAX_ID_DIGITS
            and 0 < int(value) <= MAX_ID
        ):
            return int(value)
        raise HttpNotFound(f"no {self.kind} {value[:100]!r}")

    def to_url(self, value: Any) -> str:
        return str(int(value))


class ModuleIdConverter(_IdConverter):
    """``<module_id:…>``: a module id."""

    kind = "module"


class TaskIdConverter(_IdConverter):
    """``<task_id:…>``: a task id."""

    kind = "task"


def init_app(app: Flask) -> None:
    """Make the id converters known to the app's url map."""
    app.url_map.converters["module_id"] = ModuleIdConverter
    app.url_map.converters["task_id"] = TaskIdConverter
    # merging "//" answers an HTML 308 redirect, which Flask passes by the JSON handlers
    app.url_map.merge_slashes = False


def both_forms(bp: Blueprint, rule: str, view: Callable[..., Any], methods: list[str]) -> None:
    """Serve ``rule`` under its singular path (``/module/…``) and its plural (``/modules/…``)."""
    for path in (rule, _plural(rule)):
        bp.add_url_rule(path, endpoint=view.__name__, view_func=view, methods=methods)


def _plural(rule: str) -> str:
    head, sep, tail = rule[1:].partition("/")
    return f"/{head}s{sep}{tail}"


def current_service() -> Service:
    """The service the current app serves."""
    return current_app.extensions["orchestra"]  # type: ignore[no-any-return]
