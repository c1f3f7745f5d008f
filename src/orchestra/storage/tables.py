"""The database schema: modules, tasks, workers, tokens, audit (SQLAlchemy 2.0 models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# the modules whose name is taken: not a failed one, nor a removed one kept for its history
_LIVE_NAME = "status NOT IN ('error', 'removed')"
# the tokens whose name is taken: those not revoked (an expired one still holds its name)
_LIVE_TOKEN = "revoked IS NULL"
# ids are 64-bit everywhere (the API accepts any up to 2**63 - 1): BIGINT on PostgreSQL, whose
# INTEGER is 32-bit; SQLite's INTEGER already is 64-bit, and must stay INTEGER to be the rowid
Id = BigInteger().with_variant(Integer(), "sqlite")


def now() -> datetime:
    """The current time as rows store it: UTC, naive."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base for Orchestra's tables."""


class ModuleRow(Base):
    """A registered module; visible to users once ``status`` is ``installed``."""

    __tablename__ = "modules"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # NULL while the metadata has not been read yet (an API registration just accepted)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # installing | installed | error | removed
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[str | None] = mapped_column(String(100))
    output_type: Mapped[str | None] = mapped_column(String(100))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # metadata.json as given
    source: Mapped[str] = mapped_column(Text)  # folder path, git URL or "upload:<name>"
    source_kind: Mapped[str] = mapped_column(String(16))  # folder | git | archive
    ref: Mapped[str | None] = mapped_column(Text)
    subdir: Mapped[str | None] = mapped_column(Text)
    commit: Mapped[str | None] = mapped_column(String(64))
    python_version: Mapped[str | None] = mapped_column(String(32))
    install_dir: Mapped[str | None] = mapped_column(Text)  # folder name under installs/
    install_log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    # the process installing it while status is installing, so recovery can tell it is gone
    installer_pid: Mapped[int | None] = mapped_column(Integer)
    # hidden from clients' module list until published (operators see it)
    staged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the exact package versions resolved at registration ({"python": …, "packages": […]}),
    # which every worker installs
    lock: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # what the operator supplied for a module that does not say, kept by updates:
    # install.resolve_as_of (a date or "commit") and install.python_version
    as_of: Mapped[str | None] = mapped_column(String(32))
    python_requested: Mapped[str | None] = mapped_column(String(32))
    created: Mapped[datetime] = mapped_column()
    updated: Mapped[datetime] = mapped_column()

    __table_args__ = (
        # a name is claimed by an installed or installing module, never by a failed one
        Index("ix_modules_live_name", "name", unique=True, sqlite_where=text(_LIVE_NAME)),
    )


class TaskRow(Base):
    """One run of a module; the lifecycle module is the only writer of ``status``."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    module_id: Mapped[int] = mapped_column(Id, ForeignKey("modules.id"))
    status: Mapped[str] = mapped_column(String(16))  # see tasks.status.TaskStatus
    args: Mapped[dict[str, str]] = mapped_column(JSON)  # the values as passed to the module
    created: Mapped[datetime] = mapped_column()
    started: Mapped[datetime | None] = mapped_column()
    finished: Mapped[datetime | None] = mapped_column()
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # [{name, size}]
    timeout: Mapped[float | None] = mapped_column()
    install_dir: Mapped[str | None] = mapped_column(Text)  # the generation it runs in
    executor: Mapped[str] = mapped_column(String(32), default="local")
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # executor's job identity
    # what the executor runs (argv, cwd, env, timeout, declared outputs), fixed at submit
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    kill_requested: Mapped[bool] = mapped_column(default=False)
    # who runs it: the server process (local) or the worker (remote) that claimed it
    worker: Mapped[str | None] = mapped_column(String(200))
    # the lease: renewed by whoever runs it; NULL for the local executor, whose tasks are
    # watched through their supervisors instead
    heartbeat: Mapped[datetime | None] = mapped_column()
    # who asked: the token's name ("local" for the command line on this data
    # folder), the end user it acted for, and both as one key that fair share groups by
    submitted_by: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    user: Mapped[str | None] = mapped_column(String(200))
    submitter: Mapped[str] = mapped_column(String(270), default="local", server_default="local")
    # the queue a worker takes it from (install.queue); copied from the spec to be indexed
    queue: Mapped[str] = mapped_column(String(100), default="default", server_default="default")
    # run or train; a run of a module with versions records the one it was given
    kind: Mapped[str] = mapped_column(String(8), default="run", server_default="run")
    model_version: Mapped[int | None] = mapped_column(Integer)
    model_digest: Mapped[str | None] = mapped_column(String(80))
    # what answers "the same request again" for a deterministic module: see tasks.reuse
    reuse_key: Mapped[str | None] = mapped_column(String(64))
    # the earlier task whose outputs answered this one (hard links to its files)
    reused_from: Mapped[int | None] = mapped_column(Id)
    start: Mapped[str | None] = mapped_column(String(8))  # warm | cold, once it has started

    __table_args__ = (
        # the primary key alone, so that paging deep into the list scans a narrow index
        # instead of the rows (see TaskRunner.list)
        Index("ix_tasks_id", "id"),
        Index("ix_tasks_status_id", "status", "id"),
        Index("ix_tasks_module_id", "module_id", "id"),
        # fair share: each submitter's oldest queued task, its running count, its last start
        Index("ix_tasks_status_submitter", "status", "submitter", "id"),
        Index("ix_tasks_status_queue_submitter", "status", "queue", "submitter", "id"),
        Index("ix_tasks_submitter_started", "submitter", "started"),
        Index("ix_tasks_reuse_key", "reuse_key", "id"),
    )


class ModelVersionRow(Base):
    """A model version: what a training task wrote, stored by content."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    module_id: Mapped[int] = mapped_column(Id, ForeignKey("modules.id"))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    # [[relative path, sha256 hex, size], ...] sorted by path: what the folder holds
    contents: Mapped[list[Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column()
    # the training task; cleared when that task is deleted (SQLite gives its id again)
    task_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("tasks.id", ondelete="SET NULL", name="fk_model_versions_task"),
        unique=True,
    )  # fmt: skip
    generation: Mapped[str | None] = mapped_column(Text)
    commit: Mapped[str | None] = mapped_column(String(64))
    args: Mapped[dict[str, str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    base: Mapped[int | None] = mapped_column(Integer)
    # true once its files are gone with its module (the record stays until purged)
    removed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_model_versions_module_version", "module_id", "version", unique=True),
    )


class ModelCounterRow(Base):
    """The last version number a module's trainings were given: a number is never reused."""

    __tablename__ = "model_counters"
    module_id: Mapped[int] = mapped_column(Id, ForeignKey("modules.id"), primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class ModelAliasRow(Base):
    """Where a module's alias (``default``, ``champion``, ...) points now."""

    __tablename__ = "model_aliases"
    module_id: Mapped[int] = mapped_column(Id, ForeignKey("modules.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class AliasMoveRow(Base):
    """One move of an alias, kept for ever: ``to`` is NULL for a removal."""

    __tablename__ = "model_alias_moves"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    module_id: Mapped[int] = mapped_column(Id, ForeignKey("modules.id"))
    alias: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column()
    by: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_model_alias_moves_module", "module_id", "id"),)


class WorkerRow(Base):
    """A worker process of a remote executor, as it announced itself; renewed by heartbeats."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer)
    hostname: Mapped[str] = mapped_column(String(255))
    started: Mapped[datetime] = mapped_column()
    heartbeat: Mapped[datetime] = mapped_column()


class TokenRow(Base):
    """An API token: only its SHA-256 is kept, never the token itself."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the token
    # hex SHA-256 of the dashboard's cookie value (an HMAC of the token): the cookie signs in
    # on every server sharing the database, and the token itself never travels in it
    session_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column()
    expires: Mapped[datetime | None] = mapped_column()
    last_used: Mapped[datetime | None] = mapped_column()  # renewed at most once a minute
    revoked: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_tokens_live_name", "name", unique=True, sqlite_where=text(_LIVE_TOKEN)),
    )


class AuditRow(Base):
    """One entry of the audit log: appended in the transaction of the change it records."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column()
    who: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | failed
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        Index("ix_audit_who", "who", "id"),
        Index("ix_audit_action", "action", "id"),
    )


def add_postgresql_options() -> None:
    """The PostgreSQL form of the partial index, set only for PostgreSQL.

    Naming a dialect's option loads that dialect: on every start, this one cost SQLite
    users ~65 ms, on the critical path of a command-line registration.
    """
    for table_name, index_name, where in (
        (ModuleRow.__tablename__, "ix_modules_live_name", _LIVE_NAME),
        (TokenRow.__tablename__, "ix_tokens_live_name", _LIVE_TOKEN),
    ):
        table = Base.metadata.tables[table_name]
        index = next(i for i in table.indexes if i.name == index_name)
        index.dialect_kwargs["postgresql_where"] = text(where)
