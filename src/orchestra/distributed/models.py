"""A worker's model versions: fetched once by digest into a cache its tasks share; trainings sent.

A version a task reads is fetched from the API the first time a task of this worker needs it,
checked against its digest, and kept read-only under ``models/cache/<digest>`` of the
worker's own data folder; a file lock per digest makes concurrent first uses (threads or
processes) fetch it once. Versions that no kept version names any more are dropped.

A training's model folder goes the other way: each distinct file the API lacks is sent
(streamed, checked by its SHA-256 on arrival, retried), then the list of files with the
folder's digest, and the API makes the version before the task is recorded as done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from orchestra.distributed.client import ApiError
from orchestra.installer import scratch
from orchestra.models.store import SHA256, ModelProblem, hash_folder
from orchestra.models.trainings import METRICS, read_metrics
from orchestra.sources.archive import unpack_checked
from orchestra.storage.tables import ModelVersionRow
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.distributed.client import ApiClient
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)


class ModelCache:
    """The versions this worker holds, by digest."""

    def __init__(self, settings: Settings, client: ApiClient) -> None:
        self.settings = settings
        self.client = client
        self.root = settings.models_dir / "cache"

    def folder(self, module_id: int, version: int, digest: str) -> Path:
        """The version's folder here, fetched and checked the first time; OSError if it fails."""
        hexdigest = digest.removeprefix("sha256:")
        if not SHA256.fullmatch(hexdigest):
            raise OSError(f"model version {version}: {digest[:80]!r} is not a digest")
        final = self.root / hexdigest
        if final.is_dir():
            return final
        with self._file_lock(hexdigest):
            if not final.is_dir():  # another task fetched it while this one waited
                try:
                    self._fetch(module_id, version, digest, final)
                except (ApiError, ModelProblem) as exc:
                    raise OSError(f"could not fetch model version {version}: {exc}") from exc
        return final

    def _fetch(self, module_id: int, version: int, digest: str, final: Path) -> None:
        _LOGGER.info("fetching model version %s of module %s (%s)", version, module_id, digest)
        with scratch(self.settings, "model") as workdir:
            archive = workdir / "model.zip"
            named = self.client.download_model(module_id, version, archive)
            if named != digest:
                raise ModelProblem(f"the API names {named!r} for it, the task {digest!r}")
            unpacked = workdir / "files"
            unpack_checked(archive, unpacked, self.settings)
            if hash_folder(unpacked).digest != digest:
                raise ModelProblem(f"its files arrived damaged (not {digest})")
            for path in unpacked.rglob("*"):
                if path.is_file():
                    os.chmod(path, 0o444)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(unpacked, final)

    @contextlib.contextmanager
    def _file_lock(self, hexdigest: str) -> Iterator[None]:
        folder = self.settings.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"model-{hexdigest}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def drop_unused(self, db: Database) -> list[str]:
        """Remove the versions that no kept version names any more (deleted, module removed)."""
        if not self.root.is_dir():
            return []
        with db.read() as session:
            kept = set(
                session.scalars(
                    select(ModelVersionRow.digest).where(ModelVersionRow.removed.is_(False))
                )
            )
        dropped = []
        for child in self.root.iterdir():
            if f"sha256:{child.name}" in kept or not SHA256.fullmatch(child.name):
                continue
            with self._file_lock(child.name):
                shutil.rmtree(child, ignore_errors=True)
            dropped.append(child.name)
        return dropped

    def send_training(self, task_id: int, folder: Path, outcome: Outcome) -> Outcome:
        """A done training's model sent to the API, which makes the version; else why not."""
        if outcome.status != TaskStatus.DONE:
            return outcome
        try:
            stored = hash_folder(folder)
        except ModelProblem as exc:
            return dataclasses.replace(outcome, status=TaskStatus.ERROR, error=exc.message)
        try:
            sent: set[str] = set()
            for rel, sha, _ in stored.contents:
                if sha not in sent and not self.client.has_blob(sha):
                    self.client.upload_blob(sha, folder / rel)
                sent.add(sha)
            payload = {"contents": [list(e) for e in stored.contents], "digest": stored.digest,
                       "metrics": read_metrics(folder / METRICS)}  # fmt: skip
            self.client.send_training(task_id, payload)
        except ApiError as exc:
            why = f"the model was not delivered: {exc}"
            return dataclasses.replace(outcome, status=TaskStatus.ERROR, error=why)
        return outcome
