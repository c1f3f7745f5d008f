"""A training's end: what its model folder holds becomes a version, or the task fails saying why.

Run by whoever settles the task (the exit watcher, the sweep, a command-line wait), before
the task's final status is written; made once per task (the version's row names its task),
so two observers settling the same task make one version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra.errors import is_disk_full
from orchestra.models import versions
from orchestra.models.store import ModelProblem, ModelStore, Stored
from orchestra.storage.files import TaskFolder
from orchestra.tasks import lifecycle
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
METRICS = "metrics.json"
STEPS = "metrics.jsonl"
MAX_METRICS_BYTES = 1024 * 1024


class Trainings:
    """Turns finished trainings into versions in this data folder's store."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.store = ModelStore(settings.models_dir)

    def conclude(self, task_id: int, spec: Mapping[str, Any], outcome: Outcome) -> Outcome:
        """The outcome of a task once its model, if it is a done training, is a version."""
        if spec.get("kind") != "train" or outcome.status != TaskStatus.DONE:
            return outcome
        folder = TaskFolder(self.settings.tasks_dir, task_id).output
        try:
            stored = self.store.ingest(folder)
        except ModelProblem as exc:
            return dataclasses.replace(outcome, status=TaskStatus.ERROR, error=exc.message)
        except OSError as exc:
            why = "no space left to store the model" if is_disk_full(exc) else str(exc)
            return dataclasses.replace(outcome, status=TaskStatus.ERROR, error=why)
        try:
            return self.make_version(task_id, spec, outcome, stored, read_metrics(folder / METRICS))
        finally:
            self.store.unstage(stored)

    def make_version(
        self,
        task_id: int,
        spec: Mapping[str, Any],
        outcome: Outcome,
        stored: Stored,
        metrics: dict[str, Any] | None,
    ) -> Outcome:
        """Record the version of stored files (after ``ingest``, or a worker's upload)."""
        row = lifecycle.read(self.db, task_id)
        if row is None:
            return dataclasses.replace(outcome, status=TaskStatus.ERROR, error="task forgotten")
        training = spec.get("training") or {}
        made = versions.Made(
            module_id=row.module_id, task_id=task_id, generation=row.install_dir,
            commit=training.get("commit"), args=row.args, metrics=metrics,
            base=row.model_version, promote=bool(training.get("promote")),
        )  # fmt: skip
        version, created = versions.create(self.db, self.store, made, stored)
        if created:
            _LOGGER.info("task %s made version %s of module %s", task_id, version.version,
                         row.module_id)  # fmt: skip
            self._keep_newest(row.module_id)
        return outcome

    def _keep_newest(self, module_id: int) -> None:
        keep = self.settings.model_keep
        if keep > 0:
            dropped = versions.keep_newest(self.db, self.store, module_id, keep)
            if dropped:
                _LOGGER.info("module %s: versions %s dropped (ORCHESTRA_MODEL_KEEP=%s)",
                             module_id, dropped, keep)  # fmt: skip


def read_metrics(path: Path) -> dict[str, Any] | None:
    """``metrics.json``'s figures (name -> finite number); None when it holds none."""
    try:
        if path.stat().st_size > MAX_METRICS_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    figures = {str(k)[:100]: v for k, v in data.items() if _is_number(v)}
    return figures or None


def read_steps(path: Path, limit: int = 100_000) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` so far that are JSON objects (a last, partial line left)."""
    steps: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n") or len(steps) >= limit:
                    break  # being written: read at the next look
                try:
                    item = json.loads(raw)
                except (ValueError, RecursionError):
                    continue
                if isinstance(item, dict):
                    steps.append({str(k)[:100]: v for k, v in item.items() if _plain(v)})
    except OSError:
        return steps
    return steps


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> bool:
    return _is_number(value) or (isinstance(value, str) and len(value) < 200)
