"""Read and validate a module's metadata.json; check run arguments against what it declares."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

from orchestra.errors import InvalidInput, InvalidMetadata, TooLarge

METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 1024 * 1024
TYPES = ("str", "int", "float", "bool")
ALWAYS_OFFERED = ("start", "stop")
# \Z, not $: "$" also matches before a trailing newline ("start\n" would pass)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}\Z")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # a Celery queue (a Redis key)
_PYVER = re.compile(r"^[0-9]+(\.[0-9]+){0,2}\Z")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
AS_OF_COMMIT = "commit"  # install.resolve_as_of: the date of the registered git commit
LIMIT_KEYS = ("memory_mb", "cpu_seconds", "output_mb", "processes")
# request options: given like arguments, never passed to the module
REQUEST_OPTIONS = ("model", "fresh", "base", "promote")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One declared input: a name and, when the module says so, a type."""

    name: str
    type: str | None = None


@dataclass(frozen=True)
class Training:
    """How a module is trained: its ``train`` object, validated."""

    executable: str
    args: tuple[Param, ...]
    hyperparameters: tuple[Param, ...]
    inputs: dict[str, Param]
    defaults: dict[str, Any]
    timeout: float | None = None
    queue: str | None = None  # None: the module's install.queue
    network: bool | None = None  # None: the module's network
    limits: dict[str, int] | None = None  # None: the module's limits


@dataclass(frozen=True)
class Manifest:
    """A validated metadata.json; ``raw`` keeps every key, unknown ones included."""

    raw: dict[str, Any]
    name: str
    description: str
    version: str | None
    args: tuple[Param, ...]
    hyperparameters: tuple[Param, ...]
    defaults: dict[str, Any]
    output_type: str
    output_files: tuple[str, ...] | None
    executable: str
    files: tuple[str, ...]
    requirements: str | tuple[str, ...] | None
    python_version: str | None
    timeout: float | None
    inputs: dict[str, Param] = field(default_factory=dict)
    requirements_file: str | None = None
    network: bool = False  # whether its tasks may use the network
    limits: dict[str, int] = field(default_factory=dict)  # its own limits, by LIMIT_KEYS
    queue: str = "default"  # the queue its tasks go to on workers (install.queue)
    resolve_as_of: str | None = None  # a date, or "commit": nothing released later is used
    train: Training | None = None  # how it is trained; None: it is not
    model_required: bool = False  # whether a run needs a model version (model.required)
    # same generation and arguments give the same outputs: answers may be reused (section 12)
    deterministic: bool = False
    warm: bool = True  # whether its tasks may start from a warm interpreter (install.warm)


def load_manifest(folder: Path) -> Manifest:
    """Read ``folder/metadata.json`` and validate it."""
    path = folder / METADATA_FILE
    if not path.is_file():
        raise InvalidMetadata([f"{METADATA_FILE}: not found in the module folder"])
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise InvalidMetadata([f"{METADATA_FILE}: larger than {MAX_METADATA_BYTES} bytes"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidMetadata([f"{METADATA_FILE}: not valid JSON ({exc})"]) from exc
    manifest = parse_manifest(data)
    # checked at registration only: a stored module is read as it was accepted
    problems = reserved_names(manifest)
    if problems:
        raise InvalidMetadata(problems)
    return manifest


def reserved_names(manifest: Manifest) -> list[str]:
    """Declared inputs that take the name of a request option."""
    sections = {"args": manifest.args, "hyperparameters": manifest.hyperparameters}
    if manifest.train is not None:
        sections |= {"train.args": manifest.train.args,
                     "train.hyperparameters": manifest.train.hyperparameters}  # fmt: skip
    return [
        f"{key}: {param.name!r} is the name of a request option and cannot be declared "
        f"(reserved: {', '.join(REQUEST_OPTIONS)})"
        for key, params in sections.items()
        for param in params
        if param.name in REQUEST_OPTIONS
    ]


def parse_manifest(data: Any) -> Manifest:
    """Validate parsed metadata; every problem is reported at once, each with its key."""
    if not isinstance(data, dict):
        raise InvalidMetadata(["(top level): must be a JSON object"])
    problems: list[str] = []
    name = _text(data, "name", problems, required=True)
    description = _text(data, "description", problems, required=True, allow_empty=True)
    version = _version(data, problems)
    args = _params(data, "args", problems, required=True)
    hyper = _params(data, "hyperparameters", problems, required=False)
    inputs = _inputs(args, hyper, problems)
    defaults = _defaults(data, inputs, problems)
    output_type, output_files = _output(data, problems)
    install = data.get("install")
    if not isinstance(install, dict):
        problems.append("install: required, must be an object")
        install = {}
    executable = _executable(install, problems)
    files = _files(install, problems)
    requirements = _requirements(install, problems)
    requirements_file = _requirements_file(install, problems)
    python_version = _python_version(install, problems)
    queue = _queue(install, problems)
    resolve_as_of = _resolve_as_of(install, problems)
    timeout = _timeout(data, problems)
    network, limits = _flag(data, "network", problems), _limits(data, problems)
    train = _train(data, problems)
    model_required = _model_required(data, train is not None, problems)
    deterministic = _flag(data, "deterministic", problems)
    warm = _flag(install, "warm", problems, default=True, where="install.")
    if problems:
        raise InvalidMetadata(problems)
    return Manifest(
        raw=data, name=name, description=description, version=version, args=args,
        hyperparameters=hyper, defaults=defaults, output_type=output_type,
        output_files=output_files, executable=executable, files=files,
        requirements=requirements, python_version=python_version, timeout=timeout,
        inputs=inputs, requirements_file=requirements_file, network=network, limits=limits,
        queue=queue, resolve_as_of=resolve_as_of, train=train, model_required=model_required,
        deterministic=deterministic, warm=warm,
    )  # fmt: skip


def _train(data: dict, problems: list[str]) -> Training | None:
    """The ``train`` object; its problems named ``train.<key>``."""
    value = _object(data, "train", problems)
    if value is None:
        return None
    found: list[str] = []
    executable = _executable(value, found)
    args = _params(value, "args", found, required=False)
    hyper = _params(value, "hyperparameters", found, required=False)
    inputs = _inputs(args, hyper, found)
    defaults = _defaults(value, inputs, found)
    timeout = _timeout(value, found)
    queue = _queue(value, found) if "queue" in value else None
    network = _flag(value, "network", found) if "network" in value else None
    limits = _limits(value, found) if "limits" in value else None
    problems += [
        "train." + p.replace("install.executable", "executable").replace("install.queue", "queue")
        for p in found
    ]
    if found:
        return None
    return Training(executable, args, hyper, inputs, defaults, timeout, queue, network, limits)


def _object(data: dict, key: str, problems: list[str]) -> dict | None:
    """``data[key]`` when it is an object; None when absent or (a problem named) not one."""
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        problems.append(f"{key}: must be an object, not {_kind(value)}")
        return None
    return value


def _model_required(data: dict, trainable: bool, problems: list[str]) -> bool:
    """``model.required``: default true when the module is trained."""
    value = _object(data, "model", problems)
    if value is None:
        return trainable
    required = value.get("required", trainable)
    if not isinstance(required, bool):
        problems.append(f"model.required: must be true or false, not {_kind(required)}")
        return trainable
    if required and not trainable:
        problems.append("model.required: true needs a 'train' object (how versions are made)")
    return required


def _text(
    data: dict, key: str, problems: list[str], *, required: bool, allow_empty: bool = False
) -> str:
    value = data.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: required, must be a string")
        return ""
    if not isinstance(value, str):
        problems.append(f"{key}: must be a string, not {_kind(value)}")
        return ""
    if not allow_empty and not value.strip():
        problems.append(f"{key}: must not be empty")
    if key == "name" and (len(value) > 200 or any(ord(c) < 32 for c in value)):
        problems.append("name: at most 200 characters, no control characters")
    return value


def _version(data: dict, problems: list[str]) -> str | None:
    value = data.get("version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"version: must be a string, not {_kind(value)}")
        return None
    return str(value)


def _params(data: dict, key: str, problems: list[str], *, required: bool) -> tuple[Param, ...]:
    value = data.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: required, must be a list (it may be empty)")
        return ()
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list, not {_kind(value)}")
        return ()
    params = []
    for index, item in enumerate(value):
        param = _param(item, f"{key}[{index}]", problems)
        if param:
            params.append(param)
    return tuple(params)


def _param(item: Any, where: str, problems: list[str]) -> Param | None:
    if isinstance(item, list) and len(item) == 2:
        name, kind = item
        if kind not in TYPES:
            problems.append(f"{where}: type {kind!r} is not one of {', '.join(TYPES)}")
            return None
    elif isinstance(item, str):
        name, kind = item, None
    else:
        problems.append(f"{where}: must be a name or a [name, type] pair")
        return None
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{where}: name {name!r} must be letters, digits, '_' or '-'")
        return None
    return Param(name, kind)


def _inputs(args: tuple[Param, ...], hyper: tuple[Param, ...], problems: list[str]) -> dict:
    inputs: dict[str, Param] = {}
    for param in args + hyper:
        if param.name in inputs:
            problems.append(f"args: {param.name!r} is declared more than once")
        inputs[param.name] = param
    for name in ALWAYS_OFFERED:
        inputs.setdefault(name, Param(name, "str"))
    return inputs


def _defaults(data: dict, inputs: dict[str, Param], problems: list[str]) -> dict[str, Any]:
    value = data.get("defaults", {})
    if value == [] or value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"defaults: must be an object, not {_kind(value)}")
        return {}
    for name, default in value.items():
        if name not in inputs:
            problems.append(f"defaults.{name}: not a declared argument or hyperparameter")
            continue
        try:
            coerce_value(inputs[name], default)
        except InvalidInput as exc:
            problems.append(f"defaults.{name}: {exc.message}")
    return dict(value)


def _output(data: dict, problems: list[str]) -> tuple[str, tuple[str, ...] | None]:
    value = data.get("output")
    if not isinstance(value, dict):
        problems.append("output: required, must be an object with a 'type'")
        return "", None
    kind = value.get("type")
    if not isinstance(kind, str) or not kind.strip():
        problems.append("output.type: required, must be a non-empty string")
        kind = ""
    _classes(value, problems)
    _columns(value.get("columns"), problems)
    names = value.get("filename")
    if names is None:
        return kind, None
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names:
        problems.append("output.filename: must be a name or a non-empty list of names")
        return kind, None
    for name in names:
        problem = relative_path_problem(name)
        if problem:
            problems.append(f"output.filename: {name!r} {problem}")
    return kind, tuple(n for n in names if isinstance(n, str))


def _executable(install: dict, problems: list[str]) -> str:
    value = install.get("executable")
    if not isinstance(value, str) or not _DOTTED.match(value):
        problems.append(
            f"install.executable: {value!r} must be a Python module name (like 'Model.main')"
        )
        return ""
    return value


def _files(install: dict, problems: list[str]) -> tuple[str, ...]:
    value = install.get("files")
    if not isinstance(value, list) or not value:
        problems.append("install.files: required, must be a non-empty list of relative paths")
        return ()
    for item in value:
        problem = relative_path_problem(item)
        if problem:
            problems.append(f"install.files: {item!r} {problem}")
    return tuple(v for v in value if isinstance(v, str))


def _requirements(install: dict, problems: list[str]) -> str | tuple[str, ...] | None:
    value = install.get("requirements")
    if value is None:
        return None
    if isinstance(value, str):
        problem = relative_path_problem(value)
        if problem:
            problems.append(f"install.requirements: {value!r} {problem}")
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append("install.requirements: must be a file name or a list of requirement strings")
    return None


def _requirements_file(install: dict, problems: list[str]) -> str | None:
    return _checked(install, "requirements_file", relative_path_problem, problems)


def _checked(
    install: dict, key: str, problem_of: Callable[[Any], str | None], problems: list[str]
) -> str | None:
    """``install[key]`` when ``problem_of`` finds nothing wrong with it; else the problem noted."""
    value = install.get(key)
    if value is None:
        return None
    problem = problem_of(value)
    if problem:
        problems.append(f"install.{key}: {str(value)[:100]!r} {problem}")
        return None
    return str(value)


def _classes(output: dict, problems: list[str]) -> None:
    """``output.classmap`` (name -> number) and ``output.colormap`` (name -> [r, g, b])."""
    classmap = output.get("classmap")
    if classmap is not None:
        if not isinstance(classmap, dict):
            problems.append(f"output.classmap: must be an object, not {_kind(classmap)}")
        for name, number in (classmap if isinstance(classmap, dict) else {}).items():
            if isinstance(number, bool) or not isinstance(number, int):
                problems.append(f"output.classmap.{name}: must be an integer class number")
    colormap = output.get("colormap")
    if colormap is not None:
        if not isinstance(colormap, dict):
            problems.append(f"output.colormap: must be an object, not {_kind(colormap)}")
        for name, rgb in (colormap if isinstance(colormap, dict) else {}).items():
            if not _is_rgb(rgb):
                problems.append(f"output.colormap.{name}: must be [r, g, b], each 0 to 255")


def _columns(value: Any, problems: list[str]) -> None:
    """``output.columns``: the catalog's columns after start and stop, described."""
    if value is None:
        return
    if not isinstance(value, list):
        problems.append(f"output.columns: must be a list, not {_kind(value)}")
        return
    for index, item in enumerate(value):
        where = f"output.columns[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            problems.append(f"{where}: must be an object with a 'name'")
        elif item.get("type", "str") not in ("int", "float", "str"):
            problems.append(f"{where}.type: must be int, float or str")
        elif any(not isinstance(item.get(k, ""), str) for k in ("unit", "description")):
            problems.append(f"{where}: 'unit' and 'description' must be strings")


def _is_rgb(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    )


def _python_version(install: dict, problems: list[str]) -> str | None:
    value = install.get("python_version")
    if value is None:
        return None
    if not isinstance(value, str) or not _PYVER.match(value):
        problems.append(f'install.python_version: {value!r} must be a string like "3.10"')
        return None
    return value


def _resolve_as_of(install: dict, problems: list[str]) -> str | None:
    return _checked(install, "resolve_as_of", as_of_problem, problems)


def as_of_problem(value: object) -> str | None:
    """Why ``value`` is not a date ``YYYY-MM-DD`` nor ``"commit"``; None when it is one."""
    if value == AS_OF_COMMIT:
        return None
    if isinstance(value, str) and _DATE.match(value):
        try:
            date.fromisoformat(value)
            return None
        except ValueError:
            return "is not a real date"
    return f'must be a date like "2022-03-01" or "{AS_OF_COMMIT}"'


def check_choices(as_of: str | None, python: str | None) -> None:
    """Refuse an operator's ``as_of`` or ``python_version`` that cannot be used."""
    problem = as_of_problem(as_of) if as_of is not None else None
    if problem:
        raise InvalidInput(f"as_of: {str(as_of)[:100]!r} {problem}", key="as_of")
    if python is not None and not _PYVER.match(python):
        raise InvalidInput(
            f'python_version: {python[:100]!r} must be a version like "3.10"', key="python_version"
        )


def _queue(install: dict, problems: list[str]) -> str:
    value = install.get("queue", "default")
    if not isinstance(value, str) or not _QUEUE.match(value):
        problems.append(
            f"install.queue: {str(value)[:100]!r} must be a name of letters, digits, '_', '-', '.'"
        )
        return "default"
    return value


def _timeout(data: dict, problems: list[str]) -> float | None:
    value = data.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        problems.append("timeout: must be a positive number of seconds")
        return None
    return float(value)


def _flag(
    data: dict, key: str, problems: list[str], *, default: bool = False, where: str = ""
) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{where}{key}: must be true or false, not {_kind(value)}")
        return default
    return value


def _limits(data: dict, problems: list[str]) -> dict[str, int]:
    value = data.get("limits")
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"limits: must be an object, not {_kind(value)}")
        return {}
    limits = {}
    for key, item in value.items():
        if key not in LIMIT_KEYS:
            problems.append(f"limits.{key}: unknown limit (known: {', '.join(LIMIT_KEYS)})")
        elif isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 2**40:
            problems.append(f"limits.{key}: must be a positive whole number")
        else:
            limits[key] = item
    return limits


def relative_path_problem(value: Any) -> str | None:
    """Why ``value`` is not a safe relative path inside a folder, or None when it is."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if "\x00" in value or "\\" in value:
        return "must not contain NUL or backslash characters"
    path = PurePosixPath(value)
    if path.is_absolute():
        return "must be a relative path"
    if ".." in path.parts:
        return "must not leave the module folder ('..')"
    return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def coerce_value(param: Param, value: Any) -> str:
    """Check one value against the declared type; return the text passed to the module."""
    if isinstance(value, dict | list) or value is None:
        raise InvalidInput(f"{param.name}: must be a single value, not {_kind(value)}")
    kind = param.type
    if kind == "bool":
        return _as_bool(param.name, value)
    if kind == "int":
        return _as_int(param.name, value)
    if kind == "float":
        return _as_float(param.name, value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if kind == "str" and not isinstance(value, str):
        raise InvalidInput(f"{param.name}: must be a string, not {_kind(value)}", key=param.name)
    return text


def _as_bool(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if isinstance(value, str) and text in _TRUE | _FALSE:
        return "true" if text in _TRUE else "false"
    raise InvalidInput(f"{name}: {value!r} is not a boolean (true or false)", key=name)


def _as_int(name: str, value: Any) -> str:
    if isinstance(value, bool | float):
        raise InvalidInput(f"{name}: {value!r} is not an integer", key=name)
    try:
        return str(int(value.strip() if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: {value!r} is not an integer", key=name) from None


def _as_float(name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise InvalidInput(f"{name}: {value!r} is not a number", key=name)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: {value!r} is not a number", key=name) from None
    if not math.isfinite(number):
        raise InvalidInput(f"{name}: {value!r} is not a finite number", key=name)
    return value.strip() if isinstance(value, str) else repr(number)


def bind_arguments(
    manifest: Manifest, given: Mapping[str, Any], *, max_length: int = 4096
) -> dict[str, str]:
    """Request values, else defaults, as the texts passed to the module; all problems at once."""
    problems: list[str] = []
    unknown = sorted(set(given) - set(manifest.inputs))
    if unknown:
        problems.append("unknown argument(s): " + ", ".join(repr(u)[:100] for u in unknown))
    bound: dict[str, str] = {}
    for name, param in manifest.inputs.items():
        value = given.get(name)
        if value is None:
            value = manifest.defaults.get(name)
        if value is None:
            continue
        try:
            text = coerce_value(param, value)
        except InvalidInput as exc:
            problems.append(exc.message)
            continue
        if len(text) > max_length:
            raise TooLarge(f"{name}: longer than {max_length} characters", key=name)
        if "\x00" in text:
            problems.append(f"{name}: must not contain a NUL character")
            continue
        bound[name] = text
    if problems:
        raise InvalidInput("; ".join(problems), key=unknown[0] if unknown else None)
    return bound


def command_args(executable: str, output_dir: str, bound: Mapping[str, str]) -> list[str]:
    """The argv after the interpreter: ``-m executable output_dir --name value ...``."""
    return ["-m", executable, output_dir, *argument_tail(bound)]


def argument_tail(bound: Mapping[str, str]) -> list[str]:
    """The argv after the output folder: ``--name value`` for each bound argument."""
    tail: list[str] = []
    for name, text in bound.items():
        tail += [f"--{name}", text]
    return tail
