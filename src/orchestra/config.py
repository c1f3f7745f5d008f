"""Settings: built once, with explicit precedence, then passed down.

Precedence, highest first: explicit overrides (CLI flags, tests) > ``ORCHESTRA_*`` environment
variables > the config files, each filling what the ones before left out (the file
``ORCHESTRA_CONFIG`` names, ``$ORCHESTRA_HOME/config.toml``, ``/etc/orchestra/config.toml``)
> defaults. Every path derives from the data folder. Every value is checked here, where it is
loaded (type, range, choices): a bad one is an ``InvalidInput`` naming where it came from, the
value and what is allowed, so that a program stops at its start with one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestra.errors import InvalidInput

ENV_PREFIX = "ORCHESTRA_"
SYSTEM_CONFIG = Path("/etc/orchestra/config.toml")  # read last, by every user's commands


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "orchestra"


@dataclass(frozen=True)
class Settings:
    """Everything configurable; each field notes its unit and meaning."""

    home: Path = field(default_factory=_default_home)  # the one data folder
    database_url: str = ""  # SQLAlchemy URL; empty means SQLite at home/orchestra.db
    max_running: int = field(default_factory=lambda: os.cpu_count() or 1)  # tasks at once
    task_timeout: float = 3600.0  # seconds a task may run unless its module says otherwise
    task_retention_days: float = 0.0  # days an ended task and its files are kept; 0: forever
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    api_token: str = ""  # servers: the admin token "bootstrap"; workers: a worker token
    protect_reads: bool = False  # reads need a token too (/health stays open)
    host: str = "127.0.0.1"  # where `serve` listens
    port: int = 8470  # the port `serve` listens on
    insecure: bool = False  # allow listening beyond loopback without a token
    threads: int = 16  # WSGI worker threads
    max_upload: int = 100 * 1024 * 1024  # bytes: largest request body / zip upload
    max_unpacked: int = 1024 * 1024 * 1024  # bytes: largest total size a zip may unpack to
    max_archive_members: int = 10_000  # files a zip may hold
    max_arg_length: int = 4096  # characters in one run argument
    git_timeout: float = 300.0  # seconds a clone may take
    install_timeout: float = 1800.0  # seconds an environment build may take
    allow_requirement_options: bool = False  # accept -r/-e/--index-url lines in requirements
    compile_bytecode: bool = True  # compile the environment's .pyc in the background
    prefer_cached: bool = True  # resolve requirements from the installer cache when it can
    index_url: str = ""  # the package index requirements come from (simple API); empty: PyPI
    poll_interval: float = 1.0  # seconds between the runner's sweeps of the database
    executor: str = "local"  # where tasks run: local (this machine) or celery (workers)
    worker_lease: float = 60.0  # seconds without a heartbeat before a worker counts as lost
    uv_cache: str = ""  # the installer's cache folder; empty means home/cache/uv
    url: str = ""  # a server's REST API that the command line drives; empty means this machine
    sandbox: str = "auto"  # auto (where the machine allows) | required (refuse without) | off
    task_memory_mb: int = 0  # MB of memory a task may use (cgroup; 0 = no limit)
    task_cpu_seconds: int = 0  # seconds of CPU time per process of a task (0 = no limit)
    task_output_mb: int = 0  # MB a task may write, all its files together (0 = no limit)
    task_processes: int = 1024  # processes and threads a task may have at once (0 = no limit)
    min_free_mb: int = 100  # MB free in the data folder below which tasks wait, installs refused
    broker_url: str = ""  # the Celery broker for the celery executor, e.g. redis://host:6379/0
    api_url: str = ""  # where a worker reaches the API (packages, outputs, logs)
    max_queued_per_submitter: int = 0  # queued tasks one submitter may have (0 = no limit)
    model_keep: int = 0  # model versions kept per module after a training, plus aliased; 0 = all
    warm: bool = True  # start tasks from spare interpreters started ahead, where modules allow
    warm_memory_mb: int = 0  # MB the spare interpreters may hold; 0 = a quarter of the machine's
    warm_idle_seconds: float = 600.0  # seconds a module's spare interpreters are kept unused

    @property
    def db_url(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{self.home / 'orchestra.db'}"

    @property
    def installs_dir(self) -> Path:
        """Installed module generations: code and environment, one folder each."""
        return self.home / "installs"

    @property
    def tasks_dir(self) -> Path:
        """One folder per task: spec, logs, output, result."""
        return self.home / "tasks"

    @property
    def uploads_dir(self) -> Path:
        """Archives received through the API while they are installed."""
        return self.home / "uploads"

    @property
    def models_dir(self) -> Path:
        """Model versions: files stored once by content, each version's folder of links."""
        return self.home / "models"

    @property
    def uv_cache_dir(self) -> Path:
        """The installer cache shared by every environment (links, not copies)."""
        return Path(self.uv_cache) if self.uv_cache else self.home / "cache" / "uv"

    def place(self) -> str:
        """Where commands make their changes, as their output names it (no password)."""
        if self.url:
            return hide_password(self.url)
        if not self.database_url:
            return f"{self.home} (SQLite)"
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        kind = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(url.get_backend_name())
        where = f"{url.username or ''}@{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
        return f"{self.home} ({kind or url.get_backend_name()} {where})"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced (None values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **_coerce_all(given))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECRET = re.compile(r"(://[^:/@]*:)[^@]*@")  # the password in a URL
_INDEX_URL = re.compile(r"^(https?://[^\s/]+|file:///)\S*$")
_URL_SCHEMES = {
    "url": ("http", "https"),
    "api_url": ("http", "https"),
    "broker_url": ("redis", "rediss"),
}


@dataclass(frozen=True)
class _Rule:
    """What a setting allows, beyond its type: a check and the words that say it."""

    check: Callable[[Any], bool]
    allowed: str


def _at_least(low: float, unit: str) -> _Rule:
    return _Rule(lambda v: v >= low, f"{unit} of at least {low:g}")


def _one_of(*choices: str) -> _Rule:
    return _Rule(lambda v: v in choices, "one of " + " | ".join(choices))


def _url(schemes: tuple[str, ...]) -> _Rule:
    pattern = re.compile(rf"^({'|'.join(schemes)})://[^/\s]+")
    return _Rule(lambda v: v == "" or bool(pattern.match(v)), f"empty or a {schemes[0]}:// URL")


_POSITIVE_SECONDS = _Rule(lambda v: v > 0, "a number of seconds above 0")
_RULES: dict[str, _Rule] = {
    "home": _Rule(lambda v: str(v) not in ("", "."), "a folder path"),
    "database_url": _Rule(
        lambda v: v == "" or "://" in v, "empty (SQLite in the data folder) or a SQLAlchemy URL"
    ),
    "max_running": _at_least(1, "a whole number"),
    "task_timeout": _POSITIVE_SECONDS,
    "task_retention_days": _at_least(0, "a number of days"),
    "kill_grace": _at_least(0, "a number of seconds"),
    "host": _Rule(lambda v: v != "", "an address to listen on"),
    "port": _Rule(lambda v: 0 <= v <= 65535, "a port number from 0 to 65535"),
    "threads": _at_least(1, "a whole number"),
    "max_upload": _at_least(1, "a number of bytes"),
    "max_unpacked": _at_least(1, "a number of bytes"),
    "max_archive_members": _at_least(1, "a whole number"),
    "max_arg_length": _at_least(1, "a number of characters"),
    "git_timeout": _POSITIVE_SECONDS,
    "install_timeout": _POSITIVE_SECONDS,
    "poll_interval": _POSITIVE_SECONDS,
    "executor": _one_of("local", "celery"),
    # a lease shorter than a second leaves no room for a heartbeat (twice a second at most)
    "worker_lease": _at_least(1, "a number of seconds"),
    "sandbox": _one_of("auto", "required", "off"),
    "task_memory_mb": _at_least(0, "a whole number of MB (0: no limit)"),
    "task_cpu_seconds": _at_least(0, "a whole number of seconds (0: no limit)"),
    "task_output_mb": _at_least(0, "a whole number of MB (0: no limit)"),
    "task_processes": _at_least(0, "a whole number (0: no limit)"),
    "min_free_mb": _at_least(0, "a whole number of MB"),
    "max_queued_per_submitter": _at_least(0, "a whole number of tasks (0: no limit)"),
    "model_keep": _at_least(0, "a whole number of versions (0: keep all)"),
    "warm_memory_mb": _at_least(0, "a whole number of MB (0: a quarter of the memory)"),
    "warm_idle_seconds": _at_least(0, "a number of seconds"),
    **{name: _url(schemes) for name, schemes in _URL_SCHEMES.items()},
    "index_url": _Rule(
        lambda v: v == "" or bool(_INDEX_URL.match(v)), "empty (PyPI) or an http(s) or file URL"
    ),
}
_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def hide_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    return _SECRET.sub(r"\1***@", url)


def _shown(name: str, raw: Any) -> str:
    """The value as an error may show it: never a token, never a URL's password."""
    if name == "api_token":
        return "(hidden)"
    return hide_password(raw) if isinstance(raw, str) else repr(raw)


def _refuse(name: str, raw: Any, template: str) -> InvalidInput:
    rule = _RULES.get(name)
    kind = str(_FIELDS[name].type)
    allowed = rule.allowed if rule is not None else _TYPE_WORDS.get(kind, "a string")
    said = template.replace("{NAME}", name.upper()).replace("{name}", name)
    said = said.replace("{value}", _shown(name, raw))
    return InvalidInput(f"{said} is refused: {name} must be {allowed}", key=name)


def _typed(kind: str, raw: Any) -> Any:
    """``raw`` as the field's type; ValueError or TypeError when it is not one."""
    if kind == "Path":
        return Path(raw).expanduser()
    if kind == "bool":
        return _to_bool(raw)
    if isinstance(raw, bool) and kind in ("int", "float"):
        raise TypeError(raw)  # TOML's true is not a number
    if kind == "int":
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return int(raw)
    if kind == "float":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    if not isinstance(raw, str):
        raise TypeError(raw)
    return raw


_GIVEN = "setting {name}={value}"  # how an error names a value, by where it came from
_ENVIRONMENT = ENV_PREFIX + "{NAME}={value}"


def _coerce(name: str, raw: Any, template: str = _GIVEN) -> Any:
    try:
        value = _typed(str(_FIELDS[name].type), raw)
    except (TypeError, ValueError) as exc:
        raise _refuse(name, raw, template) from exc
    rule = _RULES.get(name)
    if rule is not None and not rule.check(value):
        raise _refuse(name, raw, template)
    return value


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(raw)


def _coerce_all(
    values: Mapping[str, Any], template: str = _GIVEN, source: str = ""
) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown setting(s) {', '.join(unknown)}{source}", key=unknown[0])
    return {name: _coerce(name, raw, template) for name, raw in values.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name in _FIELDS:
                out[name] = value
    return out


def _from_file(path: Path, *, required: bool = False) -> dict[str, Any]:
    """The settings a TOML file holds, checked; {} when it does not exist (unless required)."""
    if not path.is_file():
        if required:
            raise InvalidInput(f"ORCHESTRA_CONFIG={path}: no such file", key="config")
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except PermissionError as exc:  # not skipped: its settings would silently not apply
        raise InvalidInput(
            f"config file {path} cannot be read by this user: run as its owner or a member of "
            "its group (orchestra, as deploy/install-systemd makes it)", key="config",
        ) from exc  # fmt: skip
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {path}: {exc}", key="config") from exc
    return _coerce_all(raw, f"{{name}} = {{value}} in {path}", f" in {path}")


def _config_files(
    environ: Mapping[str, str], home: Path | None, system: Path | None
) -> list[dict[str, Any]]:
    """The config files' settings, strongest first: ORCHESTRA_CONFIG's, home's, /etc's."""
    named = environ.get(ENV_PREFIX + "CONFIG")
    first = _from_file(Path(named), required=True) if named else {}
    last = _from_file(system) if system is not None else {}
    home = home or first.get("home") or last.get("home") or _default_home()
    own = _from_file(home / "config.toml")
    if own.get("home", home) != home:
        raise InvalidInput(
            f"home in {home / 'config.toml'} names another data folder ({own['home']}): "
            "set it in ORCHESTRA_HOME or in /etc/orchestra/config.toml", key="home",
        )  # fmt: skip
    return [first, own, last, {"home": home}]


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    system_config: Path | None = SYSTEM_CONFIG,
) -> Settings:
    """Build the settings from overrides > environment > config files > defaults."""
    environ = os.environ if environ is None else environ
    given = _coerce_all({k: v for k, v in (overrides or {}).items() if v is not None})
    env = _coerce_all(_from_env(environ), _ENVIRONMENT)
    home = given.get("home") or env.get("home")
    merged: dict[str, Any] = {}
    for layer in reversed([given, env, *_config_files(environ, home, system_config)]):
        merged.update(layer)
    return Settings(**merged)
