"""The service's trainings and model versions: train, list, show, download, aliases, delete."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestra.errors import InvalidInput, NotFound, WrongState
from orchestra.models.store import SHA256, ModelStore, write_zip
from orchestra.records import Aliases, ModelVersion, TaskInfo
from orchestra.storage.files import TaskFolder, safe_join
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service.backend import Backend


_CHUNK = 1024 * 1024
_LISTS_KEPT = 64  # modules whose rendered version list is kept
_DONE = Outcome(TaskStatus.DONE, 0)


def check_sha(sha: str) -> str:
    """A hex SHA-256, or InvalidInput."""
    if not SHA256.fullmatch(sha or ""):
        raise InvalidInput("a file is named by its hex SHA-256", key="sha256")
    return sha


class Models:
    """Training tasks and the versions they make, for any front end."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend
        self.store = ModelStore(settings.models_dir)
        self._lists: dict[int, tuple[tuple[Any, ...], bytes]] = {}  # module -> (fingerprint, JSON)
        self._lock = threading.Lock()

    def train(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Check the training inputs (and ``base``, ``promote``) and queue a training task."""
        return self._backend.runner.submit(module_id, args, kind="train")

    def _known(self, module_id: int) -> int:
        self._backend.registry.catalog.row(module_id)  # NotFound for an unknown module
        return module_id

    def list_models(self, module_id: int) -> list[ModelVersion]:
        """A module's versions, newest first."""
        from orchestra.models import versions

        return versions.listing(self._backend.db, self._known(module_id))

    def list_models_json(self, module_id: int) -> bytes:
        """``{"models": [...]}`` as JSON, kept while the module's list is unchanged.

        A list of thousands of versions costs tens of milliseconds to read and render; one
        small query tells whether it changed (on any server sharing the database).
        """
        from orchestra.models import versions

        db = self._backend.db
        self._known(module_id)
        seen = versions.fingerprint(db, module_id)
        with self._lock:
            cached = self._lists.get(module_id)
        if cached is not None and cached[0] == seen:
            return cached[1]
        body = json.dumps({"models": [v.to_dict() for v in self.list_models(module_id)]})
        rendered = body.encode("utf-8")
        with self._lock:
            if len(self._lists) >= _LISTS_KEPT:
                self._lists.pop(next(iter(self._lists)))
            self._lists[module_id] = (seen, rendered)
        return rendered

    def get_model(self, module_id: int, version: int) -> ModelVersion:
        """One version's record."""
        from orchestra.models import versions

        return versions.one(self._backend.db, self._known(module_id), version)[0]

    def model_files(
        self, module_id: int, version: int
    ) -> tuple[ModelVersion, list[tuple[str, Path]]]:
        """A version's record and its files as (relative path, path here) pairs."""
        from orchestra.models import versions

        record, contents = versions.one(self._backend.db, self._known(module_id), version)
        if record.removed:
            raise NotFound(f"version {version}'s files went with module {module_id}")
        folder = self.store.version_dir(module_id, version)
        return record, [(str(entry[0]), safe_join(folder, str(entry[0]))) for entry in contents]

    def download_model(self, module_id: int, version: int, target: Path) -> ModelVersion:
        """Write the version's files as a zip to ``target`` (whole or not at all)."""
        record, files = self.model_files(module_id, version)
        write_zip(files, target)
        return record

    def delete_model(self, module_id: int, version: int) -> None:
        """Delete a version no alias points at and no queued or running task uses."""
        from orchestra.models import versions

        versions.delete_version(self._backend.db, self.store, self._known(module_id), version)

    def aliases(self, module_id: int) -> Aliases:
        """The aliases and their history."""
        from orchestra.models import versions

        return versions.aliases(self._backend.db, self._known(module_id))

    def move_alias(self, module_id: int, name: str, version: int) -> Aliases:
        """Point an alias at a version (the move, by the current caller, audited)."""
        from orchestra.models import versions

        return versions.move_alias(self._backend.db, self._known(module_id), name, version)

    def remove_alias(self, module_id: int, name: str) -> Aliases:
        """Remove an alias (kept in the history, audited)."""
        from orchestra.models import versions

        return versions.remove_alias(self._backend.db, self._known(module_id), name)

    # -- workers ------------------------------------------------------------------

    def has_blob(self, sha: str) -> bool:
        """Whether the store holds the file whose content hashes to ``sha``."""
        return self.store.blob(check_sha(sha)).is_file()

    def receive_blob(self, sha: str, body: IO[bytes]) -> int:
        """Keep a file a worker sends (a training's), if its content hashes to ``sha``."""
        return self.store.receive(check_sha(sha), iter(lambda: body.read(_CHUNK), b""))

    def receive_training(
        self, task_id: int, sent: Mapping[str, Any], *, worker: str | None
    ) -> ModelVersion:
        """Make the version of a worker's training once every file it names is here."""
        from orchestra.artifacts import running
        from orchestra.models import versions
        from orchestra.tasks import queries

        running(self._backend.db, task_id, worker)
        stored = self.store.check_sent(sent.get("contents"), sent.get("digest"))
        metrics = sent.get("metrics") if isinstance(sent.get("metrics"), dict) else None
        runner = self._backend.runner
        row = queries.row(self._backend.db, task_id)
        if row.kind != "train":
            raise WrongState(f"task {task_id} is not a training")
        runner.trainings.make_version(task_id, row.spec or {}, _DONE, stored, metrics)
        made = versions.made_by(self._backend.db, task_id)
        assert made is not None
        return self.get_model(row.module_id, made[0])

    def figures(self) -> tuple[dict[str, int], dict[int, int]]:
        """Training tasks by status and kept versions by module, for /metrics."""
        from orchestra.models import versions

        return versions.figures(self._backend.db)

    def task_metrics(self, task_id: int) -> dict[str, Any]:
        """A training's ``metrics.jsonl`` lines so far and its ``metrics.json`` (or null)."""
        from orchestra.models import versions
        from orchestra.models.trainings import METRICS, STEPS, read_metrics, read_steps
        from orchestra.tasks import queries

        row = queries.row(self._backend.db, task_id)
        folder = TaskFolder(self.settings.tasks_dir, task_id).output
        steps, final = read_steps(folder / STEPS), read_metrics(folder / METRICS)
        if row.kind == "train" and not steps and final is None:
            made = versions.made_by(self._backend.db, task_id)  # its task folder may be gone
            if made is not None:
                folder = self.store.version_dir(row.module_id, made[0])
                steps, final = read_steps(folder / STEPS), made[1]
        return {"task": task_id, "kind": row.kind, "status": row.status, "steps": steps,
                "final": final}  # fmt: skip
