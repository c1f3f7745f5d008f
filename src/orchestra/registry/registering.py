"""Registering a module: build a generation, then make it visible in one write."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra import installer
from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import WrongState
from orchestra.records import ModuleInfo
from orchestra.registry.rows import (
    ERROR,
    INSTALLED,
    INSTALLING,
    REMOVED,
    apply_built,
    failure_text,
    info,
    log_progress,
    new_row,
    now,
)
from orchestra.sources import SourceSpec, precheck
from orchestra.storage.tables import ModuleRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.installer import Built
    from orchestra.registry.catalog import Catalog
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]


class Background:
    """The installation threads a registry started, so that they can be waited for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def start(self, target: Callable[..., None], *args: object, name: str) -> None:
        """Run ``target(*args)`` in a daemon thread that is forgotten when it ends."""

        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        # the thread acts for the caller that started it (the audit log names who)
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(run,), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads running now."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


class Registration:
    """New modules: installed in the foreground or in a background thread."""

    def __init__(
        self, settings: Settings, db: Database, catalog: Catalog, background: Background
    ) -> None:
        self.settings = settings
        self.db = db
        self._catalog = catalog
        self._background = background

    def register(
        self, spec: SourceSpec, *, staged: bool = False, progress: Progress | None = None
    ) -> ModuleInfo:
        """Install a module from a folder or git source; nothing is left behind on failure."""
        report = progress or log_progress
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
        (progress or log_progress)(f"installed {built.manifest.name} as module {row.id}")
        return info(row)  # as written: no second read

    def _write_installed(self, built: Built, module_id: int | None, staged: bool) -> ModuleRow:
        try:
            with self.db.write() as session:
                row = self._row_to_fill(session, built, module_id, staged)
                apply_built(row, built)
                row.name, row.status, row.installer_pid = built.manifest.name, INSTALLED, None
                session.flush()
                audit.record(session, current().name, "module.register", f"module {row.id}",
                             audit.OK, f"{row.name} from {row.source}")  # fmt: skip
                return row
        except IntegrityError:
            self._check_name_free(built.manifest.name, module_id)
            name = built.manifest.name
            raise WrongState(f"a module named {name!r} is being registered") from None

    def _row_to_fill(
        self, session: Session, built: Built, module_id: int | None, staged: bool
    ) -> ModuleRow:
        if module_id is None:
            fresh = new_row(built.spec, None, staged)
            session.add(fresh)
            return fresh
        row = session.get(ModuleRow, module_id)
        if row is None:
            raise WrongState(f"module {module_id} was removed while it was installing")
        return row

    def begin(
        self, spec: SourceSpec, *, archive: Path | None = None, staged: bool = False
    ) -> ModuleInfo:
        """Accept a registration and install it in a background thread."""
        precheck(spec, self.settings, archive=archive)
        with self.db.write() as session:
            row = new_row(spec, archive, staged)
            session.add(row)
            session.flush()
            module_id = row.id
        self._background.start(
            self._install_in_background, module_id, spec, archive,
            name=f"install-module-{module_id}",
        )  # fmt: skip
        return self._catalog.get(module_id)

    def _install_in_background(
        self, module_id: int, spec: SourceSpec, archive: Path | None
    ) -> None:
        try:
            progress = functools.partial(self._note_progress, module_id)
            built = installer.build(spec, self.settings, archive=archive, progress=progress)
            self.record(built, module_id=module_id)
        except BaseException as exc:  # noqa: B036 - recorded on the row, the client reads it
            _LOGGER.info("installing module %s failed: %s", module_id, exc)
            self.mark_error(module_id, exc)
        finally:
            if archive is not None:
                archive.unlink(missing_ok=True)

    def _note_progress(self, module_id: int, message: str) -> None:
        # the installing row's log shows each step as it starts (the dashboard's progress);
        # the installer's full log replaces it when the module is recorded
        log_progress(message)
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

    def mark_error(
        self, module_id: int, exc: BaseException, action: str = "module.register"
    ) -> None:
        """Record a failed installation on its row, and in the audit log."""
        message, log = failure_text(exc)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.status, row.error, row.install_log = ERROR, message, log or message
                row.installer_pid, row.updated = None, now()
            audit.record(session, current().name, action, f"module {module_id}", audit.FAILED,
                         message)  # fmt: skip
