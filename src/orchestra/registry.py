"""The module registry: register, update, remove, list, show; atomic, with recovery.

A module's row is the only pointer to its installed generation (``installs/<uuid>/``: code,
environment, log). A generation is built at its final path and becomes visible in the one
write transaction that points the row at it; every failure removes what was built. While a
generation is being built, a ``building.pid`` marker in it keeps ``prune()`` (of this or any
other process) away from it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from orchestra import environments
from orchestra.errors import InstallError, NotFound, OrchestraError, WrongState
from orchestra.manifest import Manifest, load_manifest, parse_manifest
from orchestra.records import ModuleInfo, ModuleSummary
from orchestra.sources import FetchedSource, SourceSpec, fetch, fetch_archive, precheck
from orchestra.storage.files import InstallFolder
from orchestra.storage.tables import ModuleRow, TaskRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]
INSTALLING, INSTALLED, ERROR = "installing", "installed", "error"
BUILDING_MARKER = "building.pid"
_MAX_ID = 2**63 - 1
_ACTIVE_TASKS = ("queued", "running")
# generations this process is building; other processes' builds are known by their marker
_BUILDING: set[str] = set()
_BUILDING_LOCK = threading.Lock()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class _Job:
    """One installation: where from, and whom to tell how it goes."""

    spec: SourceSpec
    archive: Path | None
    progress: Progress


@dataclass(frozen=True)
class _Built:
    """A complete generation, not yet pointed at by any row."""

    folder: InstallFolder
    manifest: Manifest
    fetched: FetchedSource
    python_version: str
    log: str


class Registry:
    """Registered modules and their installed generations."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._manifests: dict[tuple[int, str], Manifest] = {}
        self._background: set[threading.Thread] = set()
        self._lock = threading.Lock()

    # -- registering ---------------------------------------------------------------------

    def register(self, spec: SourceSpec, *, progress: Progress | None = None) -> ModuleInfo:
        """Install a module from a folder or git source; nothing is left behind on failure."""
        job = _Job(spec, None, progress or _log_progress)
        module_id = self._insert_installing(spec, archive=None)
        try:
            return self._install(module_id, job)
        except BaseException:
            self._delete_row(module_id)
            raise

    def begin_register(self, spec: SourceSpec, *, archive: Path | None = None) -> ModuleInfo:
        """Accept a registration and install it in a background thread."""
        precheck(spec, self.settings, archive=archive)
        module_id = self._insert_installing(spec, archive=archive)
        job = _Job(spec, archive, _log_progress)
        thread = threading.Thread(
            target=self._install_in_background, args=(module_id, job),
            name=f"install-module-{module_id}", daemon=True,
        )  # fmt: skip
        with self._lock:
            self._background.add(thread)
        thread.start()
        return self.get(module_id)

    def join_background(self, timeout: float | None = None) -> None:
        """Wait for the background installations started by this registry."""
        with self._lock:
            threads = list(self._background)
        for thread in threads:
            thread.join(timeout)

    def _install_in_background(self, module_id: int, job: _Job) -> None:
        try:
            self._install(module_id, job)
        except BaseException as exc:  # noqa: B036 - recorded on the row, the client reads it
            _LOGGER.info("installing module %s failed: %s", module_id, exc)
            self._mark_error(module_id, exc)
        finally:
            if job.archive is not None:
                job.archive.unlink(missing_ok=True)
            with self._lock:
                self._background.discard(threading.current_thread())

    def _install(self, module_id: int, job: _Job) -> ModuleInfo:
        """The one installation path: fetch, validate, claim the name, build, make visible."""
        with self._scratch("install") as workdir:
            fetched = self._fetch(job, workdir)
            manifest = load_manifest(fetched.root)
            requirements = environments.read_requirements(fetched.root, manifest, self.settings)
            self._claim_name(module_id, manifest, fetched)
            built = self._build(fetched, manifest, requirements, job.progress)
            try:
                self._finish_register(module_id, built)
            except BaseException:
                _abandon(built.folder)
                raise
        self._after_swap(built)
        info = self.get(module_id)
        job.progress(f"installed {manifest.name} as module {module_id}")
        return info

    def _fetch(self, job: _Job, workdir: Path) -> FetchedSource:
        if job.archive is not None:
            job.progress("unpacking the uploaded archive")
            return fetch_archive(job.archive, workdir, self.settings, subdir=job.spec.subdir)
        job.progress(f"fetching {job.spec.location}")
        return fetch(job.spec, workdir, self.settings, progress=job.progress)

    def _insert_installing(self, spec: SourceSpec, *, archive: Path | None) -> int:
        if archive is not None:
            source, kind = f"upload:{spec.location or archive.name}", "archive"
        else:
            source, kind = _recorded_location(spec.location), "folder"
        row = ModuleRow(
            name=None, status=INSTALLING, description="", source=source, source_kind=kind,
            ref=spec.ref, subdir=spec.subdir, installer_pid=os.getpid(), install_log="",
            created=_now(), updated=_now(),
        )  # fmt: skip
        with self.db.write() as session:
            session.add(row)
            session.flush()
            return row.id

    def _claim_name(self, module_id: int, manifest: Manifest, fetched: FetchedSource) -> None:
        """Take the module's name; a concurrent registration of the same name loses here."""
        self._check_name_free(manifest.name, module_id)
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None:
                    raise WrongState(f"module {module_id} was removed while it was installing")
                row.name = manifest.name
                row.description = manifest.description
                row.version = manifest.version
                row.output_type = manifest.output_type
                row.source_kind = fetched.kind
                row.updated = _now()
        except IntegrityError:
            self._check_name_free(manifest.name, module_id)
            raise WrongState(f"a module named {manifest.name!r} is being registered") from None

    def _check_name_free(self, name: str, module_id: int) -> None:
        with self.db.read() as session:
            other = session.scalar(
                select(ModuleRow).where(
                    ModuleRow.name == name, ModuleRow.status != ERROR, ModuleRow.id != module_id
                )
            )
        if other is not None:
            raise WrongState(
                f"a module named {name!r} already exists (module {other.id}, {other.status}); "
                f"use `update {other.id}` to install a new version of it",
                key="name",
            )

    def _finish_register(self, module_id: int, built: _Built) -> None:
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is None:
                raise WrongState(f"module {module_id} was removed while it was installing")
            _apply(row, built)
            row.status = INSTALLED
            row.installer_pid = None

    def _mark_error(self, module_id: int, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, OrchestraError) else f"{type(exc).__name__}: {exc}"
        log = exc.log if isinstance(exc, InstallError) else ""
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.status, row.error, row.install_log = ERROR, message, log or message
                row.installer_pid, row.updated = None, _now()

    def _delete_row(self, module_id: int) -> None:
        with self.db.write() as session:
            session.execute(delete(ModuleRow).where(ModuleRow.id == module_id))

    # -- building a generation -----------------------------------------------------------

    def _build(
        self,
        fetched: FetchedSource,
        manifest: Manifest,
        requirements: list[str],
        progress: Progress,
    ) -> _Built:
        """Copy the files and build the environment in a new generation folder."""
        from orchestra.sources.folder import copy_files

        lines: list[str] = []

        def log(line: str) -> None:
            lines.append(line)

        python = environments.find_python(manifest.python_version)
        folder = self._new_generation()
        try:
            copy_files(fetched.root, manifest.files, folder.code)
            wanted = manifest.python_version or platform.python_version()
            progress(f"creating environment with Python {wanted}")
            if requirements:
                progress(f"installing {len(requirements)} requirement(s)")
            version = environments.build_environment(
                folder.env, requirements=requirements, python=python,
                settings=self.settings, log=log,
            )  # fmt: skip
            text = "\n".join(lines) + "\n"
            folder.log.write_text(text, encoding="utf-8")
        except BaseException as exc:
            if isinstance(exc, InstallError):
                exc.log = "\n".join(lines) + "\n"
            _abandon(folder)
            raise
        return _Built(folder, manifest, fetched, version, text)

    def _new_generation(self) -> InstallFolder:
        self.settings.installs_dir.mkdir(parents=True, exist_ok=True)
        folder = InstallFolder(self.settings.installs_dir, uuid.uuid4().hex)
        with _BUILDING_LOCK:
            _BUILDING.add(folder.root.name)
        folder.root.mkdir()
        (folder.root / BUILDING_MARKER).write_text(str(os.getpid()))
        folder.code.mkdir()
        return folder

    def _after_swap(self, built: _Built) -> None:
        """Once a row points at the generation: drop the marker, compile bytecode."""
        # the marker goes only after the commit, so prune() sees one or the other
        (built.folder.root / BUILDING_MARKER).unlink(missing_ok=True)
        with _BUILDING_LOCK:
            _BUILDING.discard(built.folder.root.name)
        if self.settings.compile_bytecode:
            environments.start_bytecode_compile(built.folder, self.settings)

    # -- updating ------------------------------------------------------------------------

    def update(
        self, module_id: int, *, ref: str | None = None, progress: Progress | None = None
    ) -> ModuleInfo:
        """Re-install from the recorded source; the old generation serves until the swap."""
        report = progress or _log_progress
        with self._module_lock(module_id):
            row = self._installed_row(module_id)
            if row.source_kind == "archive":
                raise WrongState(
                    f"module {module_id} was registered from an uploaded archive; "
                    "upload the new version as a new archive instead"
                )
            spec = SourceSpec(row.source, ref or row.ref, row.subdir)
            job = _Job(spec, None, report)
            old_dir = row.install_dir
            with self._scratch("update") as workdir:
                fetched = self._fetch(job, workdir)
                manifest = load_manifest(fetched.root)
                reqs = environments.read_requirements(fetched.root, manifest, self.settings)
                built = self._build(fetched, manifest, reqs, report)
                try:
                    self._swap(module_id, old_dir, built, spec.ref)
                except BaseException:
                    _abandon(built.folder)
                    raise
            self._after_swap(built)
        if old_dir:
            self._drop_generation(old_dir)
        self.prune()
        report(f"updated {manifest.name} (module {module_id})")
        return self.get(module_id)

    def _installed_row(self, module_id: int) -> ModuleRow:
        row = self._row(module_id)
        if row.status != INSTALLED:
            raise WrongState(f"module {module_id} is {row.status}, not installed")
        return row

    def _swap(self, module_id: int, old_dir: str | None, built: _Built, ref: str | None) -> None:
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None or row.install_dir != old_dir:
                    raise WrongState(f"module {module_id} changed while it was being updated")
                _apply(row, built)
                row.name = built.manifest.name
                row.ref = ref
        except IntegrityError:
            raise WrongState(
                f"a module named {built.manifest.name!r} already exists", key="name"
            ) from None

    @contextmanager
    def _module_lock(self, module_id: int) -> Iterator[None]:
        _check_id(module_id)
        folder = self.settings.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"module-{module_id}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WrongState(f"module {module_id} is already being updated") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- removing ------------------------------------------------------------------------

    def remove(self, module_id: int) -> None:
        """Remove a module's record, files and environment."""
        _check_id(module_id)
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None:
                    raise NotFound(f"no module {module_id}")
                install_dir = row.install_dir
                session.delete(row)
        except IntegrityError:
            raise WrongState(f"module {module_id} still has tasks; remove them first") from None
        with self._lock:
            for key in [k for k in self._manifests if k[0] == module_id]:
                del self._manifests[key]
        if install_dir:
            environments.remove_generation(self.settings.installs_dir / install_dir)
        (self.settings.home / "locks" / f"module-{module_id}.lock").unlink(missing_ok=True)

    def _drop_generation(self, name: str) -> None:
        """Remove a replaced generation unless a queued or running task still uses it."""
        with self.db.read() as session:
            used = session.scalar(
                select(TaskRow.id)
                .where(TaskRow.install_dir == name, TaskRow.status.in_(_ACTIVE_TASKS))
                .limit(1)
            )
        if used is None:
            environments.remove_generation(self.settings.installs_dir / name)

    def prune(self) -> list[str]:
        """Remove generation folders that no module nor queued/running task points at."""
        installs = self.settings.installs_dir
        if not installs.is_dir():
            return []
        # look for build markers before reading the references: a build drops its marker
        # only after its commit, so a folder is either marked here or referenced below
        candidates = [p for p in installs.iterdir() if not _in_construction(p)]
        with self.db.read() as session:
            used = set(session.scalars(select(ModuleRow.install_dir)))
            used |= set(
                session.scalars(
                    select(TaskRow.install_dir).where(TaskRow.status.in_(_ACTIVE_TASKS))
                )
            )
        removed = [p.name for p in candidates if p.name not in used]
        for name in removed:
            _LOGGER.info("removing unused generation %s", name)
            environments.remove_generation(installs / name)
        return removed

    # -- reading -------------------------------------------------------------------------

    def list(self) -> list[ModuleSummary]:
        """Every module, oldest first."""
        with self.db.read() as session:
            rows = session.scalars(select(ModuleRow).order_by(ModuleRow.id)).all()
        return [_info(row).summary() for row in rows]

    def get(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return _info(self._row(module_id))

    def runnable(self, module_id: int) -> tuple[ModuleInfo, Manifest, InstallFolder]:
        """What the task runner needs to start a task; WrongState unless installed."""
        row = self._installed_row(module_id)
        assert row.install_dir is not None
        key = (row.id, row.install_dir)
        manifest = self._manifests.get(key)
        if manifest is None:
            manifest = parse_manifest(row.meta)
            with self._lock:
                for old in [k for k in self._manifests if k[0] == row.id]:
                    del self._manifests[old]
                self._manifests[key] = manifest
        return _info(row), manifest, InstallFolder(self.settings.installs_dir, row.install_dir)

    def _row(self, module_id: int) -> ModuleRow:
        _check_id(module_id)
        with self.db.read() as session:
            row = session.get(ModuleRow, module_id)
        if row is None:
            raise NotFound(f"no module {module_id}")
        return row

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        """Settle installations whose process is gone; remove what nobody uses."""
        with self.db.write() as session:
            rows = session.scalars(select(ModuleRow).where(ModuleRow.status == INSTALLING))
            for row in rows:
                if row.installer_pid and environments.alive_since(
                    row.installer_pid, _epoch(row.created)
                ):
                    continue
                reason = f"installation interrupted: its process ({row.installer_pid}) is gone"
                _LOGGER.warning("module %s: %s", row.id, reason)
                row.status, row.error, row.installer_pid = ERROR, reason, None
                row.install_log = (row.install_log or "") + reason + "\n"
                row.updated = _now()
        self.prune()
        self._clean_scratch()

    def _clean_scratch(self) -> None:
        scratch = self.settings.home / "tmp"
        if not scratch.is_dir():
            return
        for child in scratch.iterdir():
            if not environments.alive_since(_owner_pid(child.name), child.stat().st_mtime):
                _LOGGER.info("removing stale scratch folder %s", child)
                shutil.rmtree(child, ignore_errors=True)

    @contextmanager
    def _scratch(self, purpose: str) -> Iterator[Path]:
        base = self.settings.home / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets recover() tell whose folder it is
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------


def _log_progress(message: str) -> None:
    _LOGGER.info("%s", message)


def _check_id(module_id: object) -> None:
    if isinstance(module_id, bool) or not isinstance(module_id, int):
        raise NotFound(f"no module {module_id!r}")
    if not 0 < module_id <= _MAX_ID:
        raise NotFound(f"no module {module_id}")


def _recorded_location(location: str) -> str:
    """A local folder as an absolute path, so ``update`` works from any directory."""
    path = Path(location).expanduser()
    if location and path.is_dir():
        return str(path.resolve())
    return location


def _apply(row: ModuleRow, built: _Built) -> None:
    manifest = built.manifest
    row.install_dir = built.folder.root.name
    row.meta = manifest.raw
    row.description = manifest.description
    row.version = manifest.version
    row.output_type = manifest.output_type
    row.source_kind = built.fetched.kind
    row.commit = built.fetched.commit
    row.python_version = built.python_version
    row.install_log = built.log
    row.error = None
    row.updated = _now()


def _info(row: ModuleRow) -> ModuleInfo:
    return ModuleInfo(
        id=row.id, name=row.name, description=row.description or "", version=row.version,
        status=row.status, output_type=row.output_type, metadata=row.meta, source=row.source,
        source_kind=row.source_kind, ref=row.ref, subdir=row.subdir, commit=row.commit,
        python_version=row.python_version, created=row.created, updated=row.updated,
        error=row.error, install_log=row.install_log or "",
    )  # fmt: skip


def _abandon(folder: InstallFolder) -> None:
    """Remove a generation that no row will point at."""
    environments.remove_generation(folder.root)
    with _BUILDING_LOCK:
        _BUILDING.discard(folder.root.name)


def _in_construction(folder: Path) -> bool:
    with _BUILDING_LOCK:
        if folder.name in _BUILDING:
            return True
    marker = folder / BUILDING_MARKER
    try:
        pid = int(marker.read_text().strip())
        return environments.alive_since(pid, marker.stat().st_mtime)
    except (OSError, ValueError):
        return False


def _owner_pid(name: str) -> int:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()
