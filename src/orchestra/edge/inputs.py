"""Reading requests: id converters, JSON bodies, run arguments and query parameters.

Everything here is checked before the service (and so the database or a process) sees it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

from flask import request

from orchestra.errors import InvalidInput
from orchestra.limits import MAX_ID, MAX_WAIT

_LOGGER = logging.getLogger(__name__)

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _check_text(where: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidInput(f"{where}: must not contain a NUL character", key=where[:100])


def json_body() -> Any:
    """The request body parsed as JSON; InvalidInput naming what is wrong with it."""
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not UTF-8: {exc.reason}") from None
    except RecursionError:
        raise InvalidInput("request body: JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def json_object(what: str) -> dict[str, Any]:
    """The request body as a JSON object."""
    data = json_body()
    if not isinstance(data, dict):
        raise InvalidInput(f"request body: {what} must be a JSON object")
    return data


def body_kind() -> str:
    """``none``, ``json`` or ``form``; InvalidInput for any other content type."""
    if not request.content_length and not request.headers.get("Transfer-Encoding"):
        return "none"
    mimetype = request.mimetype
    if request.is_json:
        return "json"
    if mimetype in _FORM_TYPES:
        return "form"
    shown = mimetype or "(none)"
    raise InvalidInput(
        f"unsupported content type {shown[:100]!r}: send JSON, form fields or a query string",
        key="Content-Type",
    )


def form_fields() -> list[tuple[str, str]]:
    """The form fields of the request, in order; a part without a name is an error."""
    # werkzeug keeps a multipart part without a name under the key None
    if None in request.form or None in request.files:
        raise InvalidInput("a form field has no name", key="form")
    return list(request.form.items(multi=True))


def run_arguments() -> dict[str, Any]:
    """Run arguments merged from the query string, form fields and a JSON object body."""
    sources: list[tuple[str, Iterable[tuple[str, Any]]]] = [
        ("query string", request.args.items(multi=True))
    ]
    kind = body_kind()
    if kind == "json":
        sources.append(("JSON body", json_object("run arguments").items()))
    elif kind == "form":
        fields = form_fields()
        if request.files:
            raise InvalidInput("run arguments cannot be files", key=next(iter(request.files)))
        sources.append(("form fields", fields))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, pairs in sources:
        for name, value in pairs:
            _check_text("argument name", name)
            if name in merged:
                raise InvalidInput(
                    f"argument {name[:100]!r} given more than once "
                    f"(in the {origin[name]} and the {where})",
                    key=name,
                )
            if isinstance(value, str):
                _check_text(name, value)
            merged[name] = value
            origin[name] = where
    return merged


def query_int(name: str, default: int, *, minimum: int = 0, maximum: int = MAX_ID) -> int:
    """An integer query parameter within bounds."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise InvalidInput(f"{name}: {raw[:100]!r} is not an integer", key=name)
    value = int(text)
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name}: must be between {minimum} and {maximum}", key=name)
    return value


def query_wait() -> float:
    """``?wait=SECONDS``: a finite, non-negative number, capped at MAX_WAIT."""
    return parse_wait(request.args.get("wait"))


def parse_wait(raw: str | None) -> float:
    """The seconds of a ``wait`` parameter (0 when absent); InvalidInput when not a number."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"wait: {raw[:100]!r} is not a number of seconds", key="wait") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput("wait: must be a finite number of seconds, 0 or more", key="wait")
    return min(value, MAX_WAIT)


def query_bool(name: str) -> bool:
    """A yes/no query parameter (absent means no)."""
    raw = request.args.get(name)
    if raw is None:
        return False
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"{name}: {raw[:100]!r} is not a boolean (1 or 0)", key=name)


def query_text(name: str) -> str | None:
    """A text query parameter, checked for NUL characters."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    _check_text(name, raw)
    return raw
