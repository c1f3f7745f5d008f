"""The module registry: register, update, remove, list, show; atomic, with recovery.

A module's row is the only pointer to its installed generation (``installs/<uuid>/``: code,
environment, log), which ``installer`` builds. A generation becomes visible in the one write
transaction that points the row at it; every failure removes what was built.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra import environments, installer
from orchestra.errors import InstallError, InvalidInput, NotFound, OrchestraError, WrongState
from orchestra.executors import proctree
from orchestra.installer import Built
from orchestra.limits import MAX_ID
from orchestra.manifest import Manifest, parse_manifest
from orchestra.records import ModuleInfo, ModuleSummary
from orchestra.sources import SourceSpec, precheck
from orchestra.storage.files import InstallFolder
from orchestra.storage.tables import ModuleRow, TaskRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]
INSTALLING, INSTALLED, ERROR, REMOVED = "installing", "installed", "error", "removed"
_NAME_CACHE_SECONDS = 2.0  # how long a task's module name may lag behind a change elsewhere
_ACTIVE_TASKS = ("queued", "running")
# prepared once: asked on every run request
_RUNNABLE = select(ModuleRow.status, ModuleRow.install_dir).where(
    ModuleRow.id == bindparam("module_id")
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Registry:
    """Registered modules and their installed generations."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._manifests: dict[tuple[int, str], Manifest] = {}
        self._background: set[threading.Thread] = set()
        self._lock = threading.Lock()
        # module id -> (valid until, (name, status)): asked for every task shown
        self._names: dict[int, tuple[float, tuple[str | None, str]]] = {}

    # -- registering ---------------------------------------------------------------------

    def register(
        self, spec: SourceSpec, *, staged: bool = False, progress: Progress | None = None
    ) -> ModuleInfo:
        """Install a module from a folder or git source; nothing is left behind on failure."""
        report = progress or _log_progress
        built = installer.build(spec, self.settings, progress=report)
        return self.record(built, staged=staged, progress=report)

    def record(
        self,
        built: Built,
        *,
        module_id: int | None = None,
        staged: bool = False,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Make a built generation visible: a new record, or the given ``installing`` one.

        The name is claimed here, in the same transaction: a concurrent registration of the
        same name (which the partial unique index refuses) loses and leaves nothing behind.
        """
        try:
            row = self._write_installed(built, module_id, staged)
        except BaseException:
            installer.abandon(built.folder)
            raise
        installer.completed(built, self.settings)
        (progress or _log_progress)(f"installed {built.manifest.name} as module {row.id}")
        return _info(row)  # as written: no second read

    def _write_installed(self, built: Built, module_id: int | None, staged: bool) -> ModuleRow:
        try:
            with self.db.write() as session:
                row = self._row_to_fill(session, built, module_id, staged)
                _apply(row, built)
                row.name, row.status, row.installer_pid = built.manifest.name, INSTALLED, None
                session.flush()
                return row
        except IntegrityError:
            self._check_name_free(built.manifest.name, module_id)
            name = built.manifest.name
            raise WrongState(f"a module named {name!r} is being registered") from None

    def _row_to_fill(
        self, session: Session, built: Built, module_id: int | None, staged: bool
    ) -> ModuleRow:
        if module_id is None:
            fresh = _new_row(built.spec, None, staged)
            session.add(fresh)
            return fresh
        row = session.get(ModuleRow, module_id)
        if row is None:
            raise WrongState(f"module {module_id} was removed while it was installing")
        return row

    def begin_register(
        self, spec: SourceSpec, *, archive: Path | None = None, staged: bool = False
    ) -> ModuleInfo:
        """Accept a registration and install it in a background thread."""
        precheck(spec, self.settings, archive=archive)
        with self.db.write() as session:
            row = _new_row(spec, archive, staged)
            session.add(row)
            session.flush()
            module_id = row.id
        thread = threading.Thread(
            target=self._install_in_background, args=(module_id, spec, archive),
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

    def _install_in_background(
        self, module_id: int, spec: SourceSpec, archive: Path | None
    ) -> None:
        try:
            progress = functools.partial(self._note_progress, module_id)
            built = installer.build(spec, self.settings, archive=archive, progress=progress)
            self.record(built, module_id=module_id)
        except BaseException as exc:  # noqa: B036 - recorded on the row, the client reads it
            _LOGGER.info("installing module %s failed: %s", module_id, exc)
            self._mark_error(module_id, exc)
        finally:
            if archive is not None:
                archive.unlink(missing_ok=True)
            with self._lock:
                self._background.discard(threading.current_thread())

    def _note_progress(self, module_id: int, message: str) -> None:
        # the installing row's log shows each step as it starts (the dashboard's progress);
        # the installer's full log replaces it when the module is recorded
        _log_progress(message)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None and row.status == INSTALLING:
                row.install_log = f"{row.install_log}{message}\n"

    def _check_name_free(self, name: str, module_id: int | None) -> None:
        with self.db.read() as session:
            other = session.scalar(
                select(ModuleRow).where(
                    ModuleRow.name == name,
                    ModuleRow.status.not_in((ERROR, REMOVED)),
                    ModuleRow.id != module_id,
                )
            )
        if other is not None:
            raise WrongState(
                f"a module named {name!r} already exists (module {other.id}, {other.status}); "
                f"use `update {other.id}` to install a new version of it",
                key="name",
            )

    def _mark_error(self, module_id: int, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, OrchestraError) else f"{type(exc).__name__}: {exc}"
        log = exc.log if isinstance(exc, InstallError) else ""
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.status, row.error, row.install_log = ERROR, message, log or message
                row.installer_pid, row.updated = None, _now()

    # -- updating ------------------------------------------------------------------------

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Re-install from the recorded source (or ``archive``); the old one serves meanwhile."""
        with self._module_lock(module_id):
            return self._update_locked(module_id, ref, archive, progress or _log_progress)

    def begin_update(
        self, module_id: int, *, ref: str | None = None, archive: Path | None = None
    ) -> ModuleInfo:
        """Accept an update (also of a module in ``error``) and install it in the background."""
        handle = self._take_lock(module_id)
        try:
            row = self._updatable_row(module_id)
            spec = _update_spec(row, ref, archive)
            precheck(spec, self.settings, archive=archive)
            if row.status == ERROR:  # nothing serves: it shows as installing meanwhile
                self._set_installing(module_id)
        except BaseException:
            _release(handle)
            raise
        thread = threading.Thread(
            target=self._update_in_background, args=(module_id, ref, archive, handle),
            name=f"update-module-{module_id}", daemon=True,
        )  # fmt: skip
        with self._lock:
            self._background.add(thread)
        thread.start()
        return self.get(module_id)

    def _update_in_background(
        self, module_id: int, ref: str | None, archive: Path | None, handle: IO[str]
    ) -> None:
        try:
            # begin_update showed a module in error as installing: this is that installation
            self._update_locked(module_id, ref, archive, _log_progress, installing_ok=True)
        except BaseException as exc:  # noqa: B036 - recorded on the row, the client reads it
            _LOGGER.info("updating module %s failed: %s", module_id, exc)
            self._mark_update_failed(module_id, exc)
        finally:
            _release(handle)
            if archive is not None:
                archive.unlink(missing_ok=True)
            with self._lock:
                self._background.discard(threading.current_thread())

    def _update_locked(
        self,
        module_id: int,
        ref: str | None,
        archive: Path | None,
        report: Progress,
        *,
        installing_ok: bool = False,
    ) -> ModuleInfo:
        row = self._updatable_row(module_id, installing_ok=installing_ok)
        spec = _update_spec(row, ref, archive)
        old_dir = row.install_dir
        built = installer.build(spec, self.settings, archive=archive, progress=report)
        try:
            self._swap(module_id, old_dir, built, spec.ref, archive)
        except BaseException:
            installer.abandon(built.folder)
            raise
        installer.completed(built, self.settings)
        if old_dir:
            self._drop_generation(old_dir)
        self.prune()
        report(f"updated {built.manifest.name} (module {module_id})")
        return self.get(module_id)

    def _updatable_row(self, module_id: int, *, installing_ok: bool = False) -> ModuleRow:
        row = self._row(module_id)
        allowed = (INSTALLED, ERROR, INSTALLING) if installing_ok else (INSTALLED, ERROR)
        if row.status not in allowed:
            raise WrongState(f"module {module_id} is {row.status}; it cannot be updated now")
        return row

    def _set_installing(self, module_id: int) -> None:
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.status, row.installer_pid, row.updated = INSTALLING, os.getpid(), _now()

    def _mark_update_failed(self, module_id: int, exc: BaseException) -> None:
        with self.db.read() as session:
            row = session.get(ModuleRow, module_id)
        if row is None or row.status != INSTALLED:
            self._mark_error(module_id, exc)
            return
        # the old version goes on serving: the failure is told beside it
        message = exc.message if isinstance(exc, OrchestraError) else f"{type(exc).__name__}: {exc}"
        log = exc.log if isinstance(exc, InstallError) else ""
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.error = f"update failed: {message}"
                row.install_log = (row.install_log or "") + "\nupdate failed:\n" + (log or message)
                row.updated = _now()

    def _installed_row(self, module_id: int) -> ModuleRow:
        row = self._row(module_id)
        if row.status != INSTALLED:
            raise WrongState(f"module {module_id} is {row.status}, not installed")
        return row

    def _swap(
        self,
        module_id: int,
        old_dir: str | None,
        built: Built,
        ref: str | None,
        archive: Path | None = None,
    ) -> None:
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None or row.install_dir != old_dir or row.status == REMOVED:
                    raise WrongState(f"module {module_id} changed while it was being updated")
                _apply(row, built)
                row.name, row.ref = built.manifest.name, ref
                row.status, row.installer_pid = INSTALLED, None
                if archive is not None:
                    row.source, row.subdir = f"upload:{archive.name}", None
        except IntegrityError:
            raise WrongState(
                f"a module named {built.manifest.name!r} already exists", key="name"
            ) from None

    @contextmanager
    def _module_lock(self, module_id: int) -> Iterator[None]:
        handle = self._take_lock(module_id)
        try:
            yield
        finally:
            _release(handle)

    def _take_lock(self, module_id: int) -> IO[str]:
        """The module's update lock (a file lock: it holds across processes), or WrongState."""
        _check_id(module_id)
        folder = self.settings.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"module-{module_id}.lock", "a")  # noqa: SIM115 - released later
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise WrongState(f"module {module_id} is already being updated") from None
        return handle

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
        self._forget_cached(module_id)
        if install_dir:
            environments.remove_generation(self.settings.installs_dir / install_dir)
        (self.settings.home / "locks" / f"module-{module_id}.lock").unlink(missing_ok=True)

    def retire(self, module_id: int) -> None:
        """Remove a module but keep its row, as ``removed``, for its tasks' history."""
        _check_id(module_id)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"no module {module_id}")
            install_dir = row.install_dir
            row.status, row.install_dir, row.staged = REMOVED, None, False
            row.installer_pid, row.error, row.updated = None, None, _now()
        self._forget_cached(module_id)
        if install_dir:
            environments.remove_generation(self.settings.installs_dir / install_dir)
        (self.settings.home / "locks" / f"module-{module_id}.lock").unlink(missing_ok=True)

    def _forget_cached(self, module_id: int) -> None:
        with self._lock:
            for key in [k for k in self._manifests if k[0] == module_id]:
                del self._manifests[key]
            self._names.pop(module_id, None)

    def has_tasks(self, module_id: int) -> bool:
        """Whether any task (of any status) belongs to the module."""
        with self.db.read() as session:
            query = select(TaskRow.id).where(TaskRow.module_id == module_id).limit(1)
            found = session.scalar(query)
        return found is not None

    def drop_removed_without_tasks(self) -> int:
        """Delete removed modules' rows once no task of theirs is left; how many."""
        with self.db.write() as session:
            orphans = select(ModuleRow.id).where(
                ModuleRow.status == REMOVED,
                ~select(TaskRow.id).where(TaskRow.module_id == ModuleRow.id).exists(),
            )
            ids = list(session.scalars(orphans))
            if ids:
                session.execute(delete(ModuleRow).where(ModuleRow.id.in_(ids)))
        return len(ids)

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
        candidates = [p for p in installs.iterdir() if not installer.in_construction(p)]
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

    def list(self, *, everything: bool = False) -> list[ModuleSummary]:
        """The modules clients see, oldest first; ``everything`` adds staged and removed ones."""
        query = select(ModuleRow).order_by(ModuleRow.id)
        if not everything:
            query = query.where(ModuleRow.staged.is_(False), ModuleRow.status != REMOVED)
        with self.db.read() as session:
            rows = session.scalars(query).all()
        return [_info(row).summary() for row in rows]

    def set_staged(self, module_id: int, staged: bool) -> ModuleInfo:
        """Hide a module from clients' list (stage) or show it (publish)."""
        _check_id(module_id)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"no module {module_id}")
            if row.status == REMOVED:
                raise WrongState(f"module {module_id} was removed")
            row.staged, row.updated = staged, _now()
        return self.get(module_id)

    def names(self, module_ids: Iterable[int]) -> dict[int, tuple[str | None, str]]:
        """Each module's name and status (a removed module keeps its name), cached briefly."""
        wanted = set(module_ids)
        now = time.monotonic()
        with self._lock:
            found = {i: self._names[i][1] for i in wanted if self._names.get(i, (0.0,))[0] > now}
        missing = wanted - set(found)
        if missing:
            query = select(ModuleRow.id, ModuleRow.name, ModuleRow.status)
            with self.db.connect() as connection:
                rows = connection.execute(query.where(ModuleRow.id.in_(missing))).all()
            with self._lock:
                for module_id, name, status in rows:
                    found[module_id] = (name, status)
                    self._names[module_id] = (now + _NAME_CACHE_SECONDS, (name, status))
        return found

    def get(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return _info(self._row(module_id))

    def runnable(self, module_id: int) -> tuple[Manifest, InstallFolder]:
        """What the task runner needs to start a task; WrongState unless installed."""
        _check_id(module_id)
        # every run request asks: a two-column read, the parsed metadata cached per generation
        with self.db.connect() as connection:
            found = connection.execute(_RUNNABLE, {"module_id": module_id}).first()
        if found is None:
            raise NotFound(f"no module {module_id}")
        status, install_dir = found
        if status != INSTALLED or install_dir is None:
            raise WrongState(f"module {module_id} is {status}, not installed")
        folder = InstallFolder(self.settings.installs_dir, install_dir)
        manifest = self._manifests.get((module_id, install_dir))
        if manifest is None:
            manifest = self._cache_manifest(self._installed_row(module_id))
        return manifest, folder

    def _cache_manifest(self, row: ModuleRow) -> Manifest:
        manifest = parse_manifest(row.meta)
        with self._lock:
            for old in [k for k in self._manifests if k[0] == row.id]:
                del self._manifests[old]
            self._manifests[(row.id, row.install_dir or "")] = manifest
        return manifest

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
                if row.installer_pid and proctree.alive_since(
                    row.installer_pid, _epoch(row.created)
                ):
                    continue
                reason = f"installation interrupted: its process ({row.installer_pid}) is gone"
                _LOGGER.warning("module %s: %s", row.id, reason)
                row.status, row.error, row.installer_pid = ERROR, reason, None
                row.install_log = (row.install_log or "") + reason + "\n"
                row.updated = _now()
        self.prune()
        installer.clean_scratch(self.settings)


# -- helpers -------------------------------------------------------------------------------


def _release(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _update_spec(row: ModuleRow, ref: str | None, archive: Path | None) -> SourceSpec:
    """What an update installs: the new archive, else the recorded source at ``ref``."""
    if archive is not None:
        if ref:
            raise InvalidInput("give either a ref or a new archive, not both", key="ref")
        return SourceSpec(archive.name, None, None)
    if row.source_kind == "archive":
        raise WrongState(
            f"module {row.id} was registered from an uploaded archive; "
            "upload the new version as an archive"
        )
    return SourceSpec(row.source, ref or row.ref, row.subdir)


def _log_progress(message: str) -> None:
    _LOGGER.info("%s", message)


def _check_id(module_id: object) -> None:
    if isinstance(module_id, bool) or not isinstance(module_id, int):
        raise NotFound(f"no module {module_id!r}")
    if not 0 < module_id <= MAX_ID:
        raise NotFound(f"no module {module_id}")


def _recorded_location(location: str) -> str:
    """A local folder as an absolute path, so ``update`` works from any directory."""
    path = Path(location).expanduser()
    if location and path.is_dir():
        return str(path.resolve())
    return location


def _new_row(spec: SourceSpec, archive: Path | None, staged: bool = False) -> ModuleRow:
    """A row for a registration that has not got its name yet."""
    if archive is not None:
        source, kind = f"upload:{spec.location or archive.name}", "archive"
    else:
        source, kind = _recorded_location(spec.location), "folder"
    return ModuleRow(
        name=None, status=INSTALLING, description="", source=source, source_kind=kind,
        ref=spec.ref, subdir=spec.subdir, installer_pid=os.getpid(), install_log="",
        created=_now(), updated=_now(), staged=staged,
    )  # fmt: skip


def _apply(row: ModuleRow, built: Built) -> None:
    manifest = built.manifest
    row.install_dir = built.folder.root.name
    row.meta = manifest.raw
    row.description = manifest.description
    row.version = manifest.version
    row.output_type = manifest.output_type
    row.source_kind = built.fetched.kind
    row.commit = built.fetched.commit
    row.python_version = built.python_version
    # what every worker installs: the exact versions this registration resolved
    row.lock = {"python": built.python_version, "packages": list(built.lock)}
    row.install_log = built.log
    row.error = None
    row.updated = _now()


def _info(row: ModuleRow) -> ModuleInfo:
    return ModuleInfo(
        id=row.id, name=row.name, description=row.description or "", version=row.version,
        status=row.status, output_type=row.output_type, metadata=row.meta, source=row.source,
        source_kind=row.source_kind, ref=row.ref, subdir=row.subdir, commit=row.commit,
        python_version=row.python_version, created=row.created, updated=row.updated,
        error=row.error, install_log=row.install_log or "", lock=row.lock,
        staged=bool(row.staged),
    )  # fmt: skip


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()
