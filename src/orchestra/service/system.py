"""The service's view of the machine: health, disk, environments, workers and their load."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestra import __version__

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.machine import MachineInfo, WorkerLoad
    from orchestra.service.backend import Backend


class System:
    """Figures about the machine and the workers."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend

    def machine(self) -> MachineInfo:
        """Free disk, environments and their sizes, the installer cache, the task load."""
        from orchestra import machine

        db = self._backend.db
        return machine.survey(
            self.settings, machine.installed_folders(db), self._backend.runner.counts(),
            self.workers(),
        )  # fmt: skip

    def workers(self) -> tuple[WorkerLoad, ...]:
        """Remote workers and local runners, each with the tasks it runs now."""
        from orchestra import machine

        return machine.worker_loads(self._backend.db, self.settings.worker_lease)

    def finished_tasks(self, after: datetime | None = None) -> list[tuple[datetime, float]]:
        """(finished, seconds run) of the tasks that ended after ``after``, oldest first."""
        from orchestra import machine

        return machine.finished_since(self._backend.db, after)

    def pythons(self) -> list[str]:
        """The Python versions an environment can be built with here, as "3.x", newest first."""
        from orchestra import interpreters

        found = interpreters.available_pythons()
        # uv builds no Python 2 environment: such an interpreter is no choice to offer
        minors = (".".join(v.split(".")[:2]) for v in reversed(found) if v.startswith("3."))
        return list(dict.fromkeys(minors))

    def health(self) -> dict[str, Any]:
        """Liveness, version and counts."""
        from orchestra.executors import sandbox

        return {
            "status": "ok",
            "version": __version__,
            "modules": len(self._backend.registry.list(everything=True)),
            "tasks": self._backend.runner.counts(),
            "sandbox": sandbox.detect(self.settings.sandbox).describe(),
        }
