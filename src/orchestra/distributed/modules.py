"""A worker's module generations: fetched from the API, built once, dropped when unused.

Each generation is unpacked and its environment built with the exact versions of its lock
under ``installs/<generation>/`` of the worker's own data folder. A file lock per generation
makes concurrent first uses (threads or processes) build it once; a ``ready`` marker says
it is complete. Generations that no module row and no active task names any more are
removed, unless a task of this worker still uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from orchestra import compiles, environments, interpreters
from orchestra.artifacts import GENERATION, MANIFEST_NAME
from orchestra.errors import InstallError
from orchestra.installer import scratch
from orchestra.manifest import Manifest, parse_manifest
from orchestra.sources.archive import unpack_checked
from orchestra.storage.files import InstallFolder
from orchestra.storage.tables import ModuleRow, TaskRow
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.distributed.client import ApiClient
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
READY = "ready"  # written last: the generation is complete
_ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)


@dataclass(frozen=True)
class Prepared:
    """A generation ready to run on this worker."""

    folder: InstallFolder
    manifest: Manifest


class WorkerModules:
    """The generations this worker has built, and the tasks using each."""

    def __init__(self, settings: Settings, client: ApiClient) -> None:
        self.settings = settings
        self.client = client
        self._users: Counter[str] = Counter()
        self._ready: dict[str, Prepared] = {}  # built and read: later tasks skip the file lock
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def using(self, module_id: int, generation: str) -> Iterator[Prepared]:
        """The generation, built if needed; kept while the block runs."""
        if not GENERATION.match(generation or ""):
            raise InstallError("fetch", f"task names no valid generation ({generation!r})")
        with self._lock:
            self._users[generation] += 1
            prepared = self._ready.get(generation)
        try:
            if prepared is None:
                with self._file_lock(generation):
                    prepared = self._ensure(module_id, generation)
                with self._lock:
                    self._ready[generation] = prepared
            yield prepared
        finally:
            with self._lock:
                self._users[generation] -= 1

    @contextlib.contextmanager
    def _file_lock(self, generation: str) -> Iterator[None]:
        folder = self.settings.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"generation-{generation}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # another thread or process may be building it
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _ensure(self, module_id: int, generation: str) -> Prepared:
        folder = InstallFolder(self.settings.installs_dir, generation)
        if not (folder.root / READY).exists():
            shutil.rmtree(folder.root, ignore_errors=True)  # what a crash mid-build left
            try:
                self._build(module_id, generation, folder)
            except BaseException:
                shutil.rmtree(folder.root, ignore_errors=True)
                raise
        metadata = json.loads(folder.metadata.read_text(encoding="utf-8"))
        return Prepared(folder, parse_manifest(metadata))

    def _build(self, module_id: int, generation: str, folder: InstallFolder) -> None:
        with scratch(self.settings, "fetch") as workdir:
            archive = workdir / "package.zip"
            _LOGGER.info("fetching module %s generation %s", module_id, generation)
            self.client.download_package(module_id, generation, archive)
            unpacked = workdir / "unpacked"
            unpack_checked(archive, unpacked, self.settings)
            package = json.loads((unpacked / MANIFEST_NAME).read_text(encoding="utf-8"))
            folder.root.mkdir(parents=True)
            (unpacked / "code").mkdir(exist_ok=True)  # a module may list no file at all
            shutil.move(unpacked / "code", folder.code)
        manifest = parse_manifest(package["metadata"])
        lock = [str(line) for line in package.get("lock") or []]
        python = interpreters.find_python(_wanted_python(manifest, package))
        cutoff = package.get("exclude_newer")
        cutoff = cutoff if isinstance(cutoff, str) and cutoff else None
        lines: list[str] = []
        _LOGGER.info("building the environment of generation %s (%d pins)", generation, len(lock))
        environments.build_environment(
            folder.env, requirements=lock, python=python, settings=self.settings,
            log=lines.append, exclude_newer=cutoff,
        )  # fmt: skip
        folder.log.write_text("\n".join(lines) + "\n", encoding="utf-8")
        folder.lock.write_text("".join(line + "\n" for line in lock), encoding="utf-8")
        folder.metadata.write_text(json.dumps(package["metadata"]), encoding="utf-8")
        (folder.root / READY).write_text(generation, encoding="ascii")
        if self.settings.compile_bytecode:
            # as on the API server: a sandboxed task cannot write its own .pyc, so without
            # this every run would compile the module's imports again
            compiles.start_bytecode_compile(folder, self.settings)

    def drop_unused(self, db: Database) -> list[str]:
        """Remove the generations nobody names any more (removed or replaced modules)."""
        root = self.settings.installs_dir
        if not root.is_dir():
            return []
        with db.read() as session:
            named = set(session.scalars(select(ModuleRow.install_dir)))
            named |= set(
                session.scalars(select(TaskRow.install_dir).where(TaskRow.status.in_(_ACTIVE)))
            )
        dropped = []
        for child in root.iterdir():
            with self._lock:
                busy = self._users[child.name] > 0
                if not busy and child.name not in named:
                    self._ready.pop(child.name, None)
            if child.name in named or busy or not GENERATION.match(child.name):
                continue
            with self._file_lock(child.name):
                environments.remove_generation(child)
            dropped.append(child.name)
        return dropped


def _wanted_python(manifest: Manifest, package: dict[str, object]) -> str | None:
    """The module's own interpreter version, else the registration's major.minor."""
    if manifest.python_version:
        return manifest.python_version
    recorded = package.get("python_version")
    if isinstance(recorded, str) and recorded.count(".") >= 1:
        return ".".join(recorded.split(".")[:2])
    return None
