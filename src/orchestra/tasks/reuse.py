"""Answers reused: a deterministic module's earlier answer to the same request.

A task of a module that declares ``"deterministic": true`` carries a key made of what fixes its
answer: the generation it runs in (code and environment), its arguments as recorded (defaults
filled in) and, where it uses one, its model version's digest. A later request with the same key
is answered by a new task row, done at once, whose output folder holds hard links to the earlier
task's files: no byte is copied, and deleting either task (its folder removed) leaves the other's
files whole, since a file lives while one link to it does. The decision is made at submission,
in the database and the API server's data folder, so it is the same on both executors (workers
send their outputs there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import bindparam, select

from orchestra.manifest import relative_path_problem
from orchestra.storage.db import Database
from orchestra.storage.files import TaskFolder
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import TaskRecord
from orchestra.tasks.status import TaskStatus

_LOGGER = logging.getLogger(__name__)
CANDIDATES = 4  # earlier answers looked at, newest first, before running anew
_TASKS = TaskRow.__table__
_EARLIER = (
    select(_TASKS)
    .where(_TASKS.c.reuse_key == bindparam("key"), _TASKS.c.status == TaskStatus.DONE.value)
    .order_by(_TASKS.c.id.desc())
    .limit(CANDIDATES)
)
_LOGS = ("stdout.log", "stderr.log")


def reuse_key(generation: str, args: Mapping[str, str], model_digest: str | None = None) -> str:
    """The key under which an answer is found again: generation, arguments, model version."""
    material = {"generation": generation, "args": dict(args), "model": model_digest}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def earlier_answer(db: Database, tasks_dir: Path, key: str) -> TaskRecord | None:
    """The newest done task with ``key`` whose output files are all still there, or None."""
    with db.connect() as connection:
        rows = connection.execute(_EARLIER, {"key": key}).all()
    for found in rows:
        record = lifecycle.record(found)
        if _outputs_whole(TaskFolder(tasks_dir, record.id).output, record.output or []):
            return record
    return None


def _outputs_whole(folder: Path, output: list[dict]) -> bool:
    """Whether every recorded output file is there with its recorded size."""
    for item in output:
        name = str(item.get("name", ""))
        if relative_path_problem(name) is not None:
            return False
        try:
            found = os.lstat(folder / name)
        except OSError:
            return False
        if not stat.S_ISREG(found.st_mode) or found.st_size != int(item.get("size", -1)):
            return False
    return True


def share_outputs(tasks_dir: Path, source: TaskRecord, task_id: int) -> None:
    """Hard-link ``source``'s output files (and its logs) into the new task's folder."""
    origin, target = TaskFolder(tasks_dir, source.id), TaskFolder(tasks_dir, task_id)
    # a folder left under a reused id (a row deleted while its files could not be) is stale
    shutil.rmtree(target.root, ignore_errors=True)
    target.output.mkdir(parents=True)
    try:
        for item in source.output or []:
            name = str(item["name"])
            (target.output / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(origin.output / name, target.output / name, follow_symlinks=False)
        for log in _LOGS:
            if (origin.root / log).is_file():
                os.link(origin.root / log, target.root / log)
    except BaseException:
        shutil.rmtree(target.root, ignore_errors=True)
        raise
