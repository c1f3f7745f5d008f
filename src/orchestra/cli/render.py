"""Turning records into text for people, or JSON for programs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from orchestra.records import (
    Aliases,
    AuditPage,
    ModelVersion,
    ModuleInfo,
    ModuleSummary,
    TaskInfo,
    TaskPage,
    TokenInfo,
)

_LOGGER = logging.getLogger(__name__)
_DESCRIPTION_WIDTH = 50


def as_json(data: Any) -> str:
    """Indented JSON, keys in the order the records give them."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned table; ``-`` stands for a missing value."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= _DESCRIPTION_WIDTH else text[: _DESCRIPTION_WIDTH - 1] + "…"


def modules_table(modules: Sequence[ModuleSummary]) -> str:
    """The module list."""
    if not modules:
        return "no modules"
    rows = [
        (m.id, m.name, m.version, m.status + " (staged)" * m.staged, m.output_type, m.description)
        for m in modules
    ]
    return table(("ID", "NAME", "VERSION", "STATUS", "OUTPUT", "DESCRIPTION"), rows)


def _module_of(task: TaskInfo) -> str:
    """The task's module id, with its name (and ``removed`` once it was)."""
    if not task.module_name:
        return str(task.module)
    removed = ", removed" if task.module_status == "removed" else ""
    return f"{task.module} ({task.module_name}{removed})"


def module_details(module: ModuleInfo) -> str:
    """One module, one field a line."""
    metadata = module.metadata or {}
    lines = [
        ("id", module.id),
        ("name", module.name),
        ("version", module.version),
        ("status", module.status + " (staged: hidden from clients)" * module.staged),
        ("output", module.output_type),
        ("arguments", _inputs(metadata.get("args"))),
        ("hyperparameters", _inputs(metadata.get("hyperparameters"))),
        ("source", module.source),
        ("ref", module.ref),
        ("subdir", module.subdir),
        ("commit", module.commit),
        ("python", module.python_version),
        ("python asked", module.python_requested),
        ("as of", _as_of(module)),
        ("created", _time(module.to_dict()["created"])),
        ("updated", _time(module.to_dict()["updated"])),
        ("error", module.error),
    ]
    text = fields(lines)
    if module.description:
        text += "\n\n" + module.description.strip()
    return text


def _inputs(items: Any) -> str | None:
    if not isinstance(items, list) or not items:
        return None
    return ", ".join(
        f"{item[0]} ({item[1]})" if isinstance(item, list) else str(item) for item in items
    )


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key: value`` lines, aligned, skipping empty values."""
    shown = [(k, v) for k, v in pairs if v is not None and v != ""]
    width = max((len(k) for k, _ in shown), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in shown)


def _time(value: Any) -> str | None:
    return None if value is None else str(value).replace("T", " ")


def tasks_table(page: TaskPage) -> str:
    """One page of the task list, and how to get the next one."""
    if not page.tasks:
        return "no tasks"
    rows = [
        (t.id, t.module, t.status, _time(t.to_dict()["created"]), _submitter(t), _args(t.args))
        for t in page.tasks
    ]
    text = table(("ID", "MODULE", "STATUS", "CREATED", "SUBMITTED BY", "ARGUMENTS"), rows)
    shown = page.offset + len(page.tasks)
    if shown < page.total:
        more = f"--cursor {page.next_cursor}" if page.next_cursor else f"--offset {shown}"
        text += f"\n({len(page.tasks)} of {page.total}; next page: {more})"
    return text


def _submitter(task: TaskInfo) -> str:
    return task.submitted_by if task.user is None else f"{task.submitted_by} ({task.user})"


def _args(args: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items())


def task_details(task: TaskInfo) -> str:
    """One task, one field a line, then its output files."""
    plain = task.to_dict()
    text = fields(
        [
            ("id", task.id),
            ("module", _module_of(task)),
            ("status", task.status),
            ("worker", task.worker),
            ("arguments", _args(task.args)),
            ("submitter", _submitter(task)),
            ("created", _time(plain["created"])),
            ("started", _time(plain["started"])),
            ("finished", _time(plain["finished"])),
            ("exit code", task.exit_code),
            ("error", task.error),
        ]
    )
    if task.output:
        text += "\noutput:\n" + "\n".join(f"  {f.name} ({f.size} bytes)" for f in task.output)
    return text


def tokens_table(tokens: Sequence[TokenInfo]) -> str:
    """The tokens: names, roles, creation, last use, expiry (never a secret)."""
    if not tokens:
        return "no tokens"
    rows = []
    for token in tokens:
        plain = token.to_dict()
        used, expires = _time(plain["last_used"]) or "never", _time(plain["expires"]) or "never"
        rows.append((token.name, token.role, _time(plain["created"]), used, expires))
    return table(("NAME", "ROLE", "CREATED", "LAST USED", "EXPIRES"), rows)


def audit_table(page: AuditPage) -> str:
    """One page of the audit log, newest first, and how to get the next one."""
    if not page.entries:
        return "no audit entries"
    rows = [(e.id, _time(e.to_dict()["at"]), e.who, e.action, e.object, e.outcome, e.detail)
            for e in page.entries]  # fmt: skip
    text = table(("ID", "AT", "WHO", "ACTION", "OBJECT", "OUTCOME", "DETAIL"), rows)
    if page.next_cursor:
        text += f"\n(next page: --cursor {page.next_cursor})"
    return text


def models_table(versions: Sequence[ModelVersion]) -> str:
    """A module's versions, one a line, each metric a column."""
    if not versions:
        return "no model versions"
    names = sorted({name for v in versions for name in (v.metrics or {})})
    headers = ("VERSION", "CREATED", "ALIASES", "TASK", *(n.upper() for n in names), "DIGEST")
    rows = [
        (v.version, _time(v.to_dict()["created"]), ",".join(v.aliases), v.task,
         *(_figure((v.metrics or {}).get(n)) for n in names), v.digest[:19])
        for v in versions
    ]  # fmt: skip
    return table(headers, rows)


def _figure(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def model_details(version: ModelVersion) -> str:
    """One version, one field a line."""
    plain = version.to_dict()
    metrics = " ".join(f"{k}={_figure(v)}" for k, v in (version.metrics or {}).items())
    return fields(
        [
            ("version", version.version), ("module", version.module),
            ("digest", version.digest), ("size", f"{version.size} bytes, {version.files} files"),
            ("created", _time(plain["created"])), ("trained by task", version.task),
            ("base", version.base), ("arguments", _args(version.args)), ("metrics", metrics),
            ("aliases", ", ".join(version.aliases)), ("commit", version.commit),
            ("files", "removed with its module" if version.removed else None),
        ]
    )  # fmt: skip


def aliases_text(found: Aliases) -> str:
    """The aliases now, then the last moves."""
    now = ", ".join(f"{name} -> {version}" for name, version in found.aliases.items())
    moves = [
        f"  {_time(m.to_dict()['at'])} {m.alias}: {m.from_ or '-'} -> {m.to or '-'} ({m.by})"
        for m in found.history[-10:]
    ]
    return "\n".join([f"aliases: {now or 'none'}", "history:", *moves])


def emit(stream: TextIO, data: Any, text: str, *, json_output: bool) -> None:
    """Write ``data`` as JSON or ``text`` for people."""
    stream.write((as_json(data) if json_output else text) + "\n")


def _as_of(module: ModuleInfo) -> str | None:
    """The operator's as-of and the cutoff it came to, e.g. ``commit (2022-03-01T10:00:00Z)``."""
    cutoff = (module.lock or {}).get("exclude_newer")
    if module.as_of and cutoff:
        return f"{module.as_of} ({cutoff})"
    return module.as_of or cutoff
