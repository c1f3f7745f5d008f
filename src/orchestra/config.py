"""Settings: built once, with explicit precedence, then passed down.

Precedence, highest first: explicit overrides (CLI flags, tests) > ``ORCHESTRA_*`` environment
variables > the config file (``$ORCHESTRA_HOME/config.toml`` or ``ORCHESTRA_CONFIG``) > defaults.
Every path derives from the data folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestra.errors import InvalidInput

ENV_PREFIX = "ORCHESTRA_"


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
    api_token: str = ""  # bearer token for changing requests; empty = no auth
    protect_reads: bool = False  # also require the token for reads
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
    def uv_cache_dir(self) -> Path:
        """The installer cache shared by every environment (links, not copies)."""
        return Path(self.uv_cache) if self.uv_cache else self.home / "cache" / "uv"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced (None values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **_coerce_all(given))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_CHOICES = {"sandbox": ("auto", "required", "off")}
_URLS = ("index_url",)
_URL = re.compile(r"^(https?://[^\s/]+|file:///)\S*$")
_NON_NEGATIVE = ("task_memory_mb", "task_cpu_seconds", "task_output_mb", "task_processes",
                 "min_free_mb")  # fmt: skip


def _coerce(name: str, raw: Any) -> Any:
    kind = _FIELDS[name].type
    if name in _CHOICES and str(raw) not in _CHOICES[name]:
        allowed = " | ".join(_CHOICES[name])
        raise InvalidInput(f"setting {name}: {raw!r} is not one of {allowed}", key=name)
    if name in _URLS and raw and not _URL.match(str(raw)):
        raise InvalidInput(f"setting {name}: {raw!r} is not an http(s) or file URL", key=name)
    try:
        if kind == "Path":
            return Path(raw).expanduser()
        if kind == "bool":
            return _to_bool(raw)
        if kind == "int":
            value = int(raw)
            if name in _NON_NEGATIVE and value < 0:
                raise ValueError(raw)
            return value
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"setting {name}: {raw!r} is not a valid {kind}", key=name) from exc


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(raw)


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown setting(s): {', '.join(unknown)}", key=unknown[0])
    return {name: _coerce(name, raw) for name, raw in values.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name in _FIELDS:
                out[name] = value
    return out


def _from_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {path}: {exc}", key="config") from exc


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from overrides > environment > config file > defaults."""
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = _from_env(environ)
    home_raw = given.get("home") or env.get("home")
    home = Path(home_raw).expanduser() if home_raw else _default_home()
    config_path = Path(environ.get(ENV_PREFIX + "CONFIG") or home / "config.toml")
    merged = ChainMap(given, env, _from_file(config_path), {"home": home})
    return Settings(**_coerce_all(dict(merged)))
