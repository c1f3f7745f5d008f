"""What a task's supervisor left in its folder, read as an ``Outcome``.

The supervisor (``supervisor.py``) writes ``supervisor.json`` while the module runs and
renames it to ``result.json``, the result appended, once it has ended. This module is the one
reader of that result on the executor's side; the lifecycle only ever sees the outcome.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestra import catalogs
from orchestra.storage.files import TaskFolder, tail_text
from orchestra.tasks.status import Outcome, TaskStatus

TAIL_LINES = 20
TAIL_BYTES = 4096


def read_result(folder: TaskFolder) -> dict[str, Any] | None:
    """The supervisor's result (the last line of result.json), or None while there is none."""
    try:
        lines = folder.result.read_text(encoding="utf-8").splitlines()
        data = json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def outcome_from_result(
    folder: TaskFolder, result: Mapping[str, Any], spec: Mapping[str, Any]
) -> Outcome:
    """What the supervisor's result means for the task, with how it started."""
    outcome = _outcome(folder, result, spec)
    start = result.get("start")
    return dataclasses.replace(outcome, start=start) if start in ("warm", "cold") else outcome


def _outcome(folder: TaskFolder, result: Mapping[str, Any], spec: Mapping[str, Any]) -> Outcome:
    reason = result.get("reason")
    code, signum = result.get("exit_code"), result.get("signal")
    if reason == "killed":
        return Outcome(TaskStatus.KILLED, code, "killed on request")
    if reason == "orphaned":
        return Outcome(TaskStatus.ERROR, code, "stopped: whoever started it is gone")
    if reason == "timeout":
        return Outcome(TaskStatus.ERROR, code, f"timed out after {spec.get('timeout', 0):g} s")
    if reason == "start_failed":
        return Outcome(TaskStatus.ERROR, None, f"could not start: {result.get('error')}")
    if reason == "limit":
        return Outcome(TaskStatus.ERROR, code, _with_tail(str(result.get("error")), folder))
    if code != 0 and (why := _out_of_space(folder, result)):
        return Outcome(TaskStatus.ERROR, code, _with_tail(why, folder))
    if signum:
        why = f"killed by signal {signum} ({_signal_name(signum)})"
        return Outcome(TaskStatus.ERROR, None, _with_tail(why, folder))
    if code != 0:
        return Outcome(TaskStatus.ERROR, code, _with_tail(f"exited with status {code}", folder))
    return _done(folder, spec.get("outputs"), spec.get("catalog"))


def _out_of_space(folder: TaskFolder, result: Mapping[str, Any]) -> str | None:
    """Why a failed task died for lack of space, as far as can be told, or None."""
    if result.get("disk_full"):  # the supervisor found the disk full when the task failed
        # (Python exits with 120 when its last flush fails: often nothing else is said)
        home = folder.root.parent.parent
        return f"no space left on the disk of the data folder ({home}): the task could not write"
    tail = tail_text(folder.stderr, TAIL_BYTES)
    if "No space left on device" in tail or "[Errno 28]" in tail:
        return "the task ran out of space (no space left on device)"  # its /tmp, or freed since
    return None


def orphan_outcome(handle: Mapping[str, Any] | None, kill_requested: bool) -> Outcome:
    """A running task whose supervisor is gone without a result."""
    if kill_requested:
        return Outcome(TaskStatus.KILLED, None, "killed on request (its supervisor was gone)")
    if not handle:
        return Outcome(TaskStatus.ERROR, None, "the task never started: its supervisor is gone")
    pid = handle.get("pid")
    return Outcome(
        TaskStatus.ERROR, None, f"supervisor died (pid {pid}) without recording how the task ended"
    )


def _done(
    folder: TaskFolder, declared: list[str] | None, catalog: Mapping[str, Any] | None = None
) -> Outcome:
    files = scan_outputs(folder.output)
    if declared:
        by_name = {f["name"]: f for f in files}
        missing = [name for name in declared if name not in by_name]
        if missing:
            message = "declared output file(s) missing: " + ", ".join(missing)
            return Outcome(TaskStatus.ERROR, 0, message, files)
        files = [by_name[name] for name in declared]
    if catalog:
        # AMDA's header is written where the task ran; sizes change with it
        problem = catalogs.finish_outputs(folder.output, [f["name"] for f in files], catalog)
        files = _restat(folder.output, files)
        if problem:
            return Outcome(TaskStatus.ERROR, 0, problem, files)
    return Outcome(TaskStatus.DONE, 0, None, files)


def _restat(root: Path, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {f["name"]: f for f in scan_outputs(root)}
    return [by_name.get(f["name"], f) for f in files]


def scan_outputs(root: Path) -> list[dict[str, Any]]:
    """Regular files inside ``root`` (real paths checked), with names relative to it."""
    try:
        base = root.resolve(strict=True)
    except OSError:
        return []
    found: list[dict[str, Any]] = []
    _scan(base, base, found)
    return sorted(found, key=lambda f: f["name"])


def _scan(base: Path, folder: Path, found: list[dict[str, Any]]) -> None:
    # only links need resolving: anything else below the resolved base is inside it
    with os.scandir(folder) as entries:
        for entry in entries:
            path = folder / entry.name
            if entry.is_symlink():
                real = path.resolve()
                if base in real.parents and real.is_file():  # links to folders are not followed
                    found.append(_output_entry(base, path, real.stat().st_size))
            elif entry.is_dir(follow_symlinks=False):
                _scan(base, path, found)
            elif entry.is_file(follow_symlinks=False):
                found.append(_output_entry(base, path, entry.stat(follow_symlinks=False).st_size))


def _output_entry(base: Path, path: Path, size: int) -> dict[str, Any]:
    return {"name": path.relative_to(base).as_posix(), "size": size}


def stderr_tail(folder: TaskFolder) -> str:
    """The last lines of the task's standard error, where the reason for a failure usually is."""
    lines = tail_text(folder.stderr, TAIL_BYTES).strip().splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def _with_tail(message: str, folder: TaskFolder) -> str:
    tail = stderr_tail(folder)
    return f"{message}; standard error ends with:\n{tail}" if tail else message


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
