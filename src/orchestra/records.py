"""Small frozen records that the service returns; the CLI and the API render them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    return value


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 UTC)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModuleSummary(_Record):
    """One line of the module list."""

    id: int
    name: str | None
    description: str
    version: str | None
    status: str
    output_type: str | None
    staged: bool = False  # hidden from clients' list until published


@dataclass(frozen=True)
class ModuleInfo(_Record):
    """Everything known about one module."""

    id: int
    name: str | None
    description: str
    version: str | None
    status: str
    output_type: str | None
    metadata: dict[str, Any] | None
    source: str
    source_kind: str
    ref: str | None
    subdir: str | None
    commit: str | None
    python_version: str | None
    created: datetime
    updated: datetime
    error: str | None
    install_log: str
    # the exact versions its registration resolved: {"python": …, "packages": ["name==1.0", …]}
    lock: dict[str, Any] | None = None
    staged: bool = False  # hidden from clients' list until published
    as_of: str | None = None  # the operator's install.resolve_as_of (a date or "commit")
    python_requested: str | None = None  # the operator's install.python_version

    def to_dict(self) -> dict[str, Any]:
        """The module's own metadata keys first, then Orchestra's (which win on a clash)."""
        ours = super().to_dict()
        return {**(self.metadata or {}), **ours}

    def summary(self) -> ModuleSummary:
        """The list form."""
        return ModuleSummary(
            self.id, self.name, self.description, self.version, self.status, self.output_type,
            self.staged,
        )  # fmt: skip


@dataclass(frozen=True)
class OutputFile(_Record):
    """One file a task wrote into its output folder."""

    name: str
    size: int


@dataclass(frozen=True)
class TaskInfo(_Record):
    """Everything known about one task."""

    id: int
    module: int
    args: dict[str, str]
    status: str
    created: datetime
    started: datetime | None
    finished: datetime | None
    exit_code: int | None
    error: str | None
    output: tuple[OutputFile, ...] | None
    # the module's name and status as they are now: a removed module keeps its name
    module_name: str | None = None
    module_status: str | None = None
    worker: str | None = None  # the server process or remote worker that ran it
    submitted_by: str = "local"  # the token's name, "local" for the command line
    user: str | None = None  # the end user the caller acted for (X-Orchestra-User)
    kind: str = "run"  # run or train
    # the model version it was given (a run), or its base (a training): {version, digest}
    model: dict[str, Any] | None = None
    trained: int | None = None  # the version a done training made
    reused_from: int | None = None  # the earlier task whose outputs answered it (section 12)
    start: str | None = None  # warm or cold: how its interpreter started, once it has


@dataclass(frozen=True)
class TaskPage(_Record):
    """One page of the task list; ``next_cursor`` continues it."""

    tasks: tuple[TaskInfo, ...]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


@dataclass(frozen=True)
class Pruned(_Record):
    """What a pruning pass forgot."""

    tasks: int
    modules: int
    older_than_days: float


@dataclass(frozen=True)
class TokenInfo(_Record):
    """An API token as listed: never its secret."""

    name: str
    role: str
    created: datetime
    expires: datetime | None
    last_used: datetime | None


@dataclass(frozen=True)
class NewToken(_Record):
    """A token just made: the only time its secret is shown."""

    name: str
    role: str
    token: str
    expires: datetime | None


@dataclass(frozen=True)
class AuditEntry(_Record):
    """One entry of the audit log."""

    id: int
    at: datetime
    who: str
    action: str
    object: str
    outcome: str  # ok | refused | failed
    detail: str


@dataclass(frozen=True)
class AuditPage(_Record):
    """One page of the audit log, newest first; ``next_cursor`` continues it."""

    entries: tuple[AuditEntry, ...]
    limit: int
    offset: int
    next_cursor: str | None


@dataclass(frozen=True)
class ModelVersion(_Record):
    """One model version of a module."""

    version: int
    module: int
    digest: str
    size: int
    files: int
    created: datetime
    task: int | None
    generation: str | None
    commit: str | None
    args: dict[str, str]
    metrics: dict[str, Any] | None
    base: int | None
    aliases: tuple[str, ...] = ()
    removed: bool = False  # its files went with its module; the record stays

    def to_dict(self) -> dict[str, Any]:
        """Field by field: a module's list may hold thousands of versions."""
        return {
            "version": self.version, "module": self.module, "digest": self.digest,
            "size": self.size, "files": self.files, "created": _plain(self.created),
            "task": self.task, "generation": self.generation, "commit": self.commit,
            "args": self.args, "metrics": self.metrics, "base": self.base,
            "aliases": list(self.aliases), "removed": self.removed,
        }  # fmt: skip


@dataclass(frozen=True)
class AliasMove(_Record):
    """One move of an alias; ``to`` is None for a removal."""

    alias: str
    from_: int | None
    to: int | None
    at: datetime
    by: str

    def to_dict(self) -> dict[str, Any]:
        """``from`` is a keyword in Python, not in JSON."""
        return {"alias": self.alias, "from": self.from_, "to": self.to,
                "at": _plain(self.at), "by": self.by}  # fmt: skip


@dataclass(frozen=True)
class Aliases(_Record):
    """A module's aliases now and every move they made, oldest first."""

    aliases: dict[str, int]
    history: tuple[AliasMove, ...]
