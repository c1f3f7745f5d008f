"""What workers on other machines fetch from and send to the API."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service.backend import Backend


class Transfers:
    """Module packages out, outputs and logs in.

    Like the other parts, it imports what needs the database where it is used: importing
    the service must not import SQLAlchemy (see ``Modules.register``).
    """

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend

    def module_package(self, module_id: int, generation: str) -> tuple[Path, str]:
        """The zip of a module generation (code, metadata, lock) and its SHA-256."""
        from orchestra import artifacts

        return artifacts.package(self.settings, self._backend.db, module_id, generation)

    def receive_output(
        self, task_id: int, name: str, body: IO[bytes], *, sha256: str, worker: str | None
    ) -> dict[str, Any]:
        """Store an output file that a worker sends for a running task."""
        from orchestra import artifacts

        return artifacts.receive_output(
            self.settings, self._backend.db, task_id=task_id, name=name, body=body,
            sha256=sha256, worker=worker,
        )  # fmt: skip

    def append_log(
        self, task_id: int, stream: str, *, offset: int, data: bytes, worker: str | None
    ) -> int:
        """Append a chunk of a running remote task's log; the log's new size."""
        from orchestra import artifacts

        return artifacts.append_log(
            self.settings, self._backend.db, task_id=task_id, stream=stream, offset=offset,
            data=data, worker=worker,
        )  # fmt: skip
