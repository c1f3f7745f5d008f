"""The database, the registry and the task runner, opened once for all the service's parts."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.registry import Registry
    from orchestra.storage.db import Database
    from orchestra.tasks.runner import TaskRunner


class Backend:
    """Opened in a background thread.

    Importing SQLAlchemy and opening the database take about half a second on a slow
    machine; a registration from the command line installs the module meanwhile, since
    only its last step needs the database.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parts: tuple[Database, Registry] | None = None
        self._runner: TaskRunner | None = None
        self._runner_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="orchestra-open", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            from orchestra.registry import Registry
            from orchestra.storage.db import Database

            db = Database(self._settings.db_url)
            db.create_schema()
            self._parts = (db, Registry(self._settings, db))
        except BaseException as exc:  # noqa: B036 - raised again in the thread that asks
            self._error = exc

    def get(self) -> tuple[Database, Registry]:
        """The database and the registry; raises what opening them raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._parts is not None
        return self._parts

    @property
    def db(self) -> Database:
        """The database."""
        return self.get()[0]

    @property
    def registry(self) -> Registry:
        """The module registry."""
        return self.get()[1]

    @property
    def runner(self) -> TaskRunner:
        """The task runner, made on first use (a registration never needs one)."""
        db, registry = self.get()
        with self._runner_lock:
            if self._runner is None:
                from orchestra.tasks.runner import TaskRunner

                self._runner = TaskRunner(self._settings, db, registry)
            return self._runner

    def opened_runner(self) -> TaskRunner | None:
        """The task runner if one was made."""
        return self._runner
