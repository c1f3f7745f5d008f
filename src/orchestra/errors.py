"""One error family; the CLI and the API each translate it in one place."""

from __future__ import annotations

import errno


class OrchestraError(Exception):
    """Base of every error a user can cause or be told about."""

    http_status = 500
    exit_code = 1

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key

    def to_dict(self) -> dict[str, object]:
        """The JSON body of an error answer."""
        body: dict[str, object] = {"error": self.message}
        if self.key:
            body["key"] = self.key
        return body


class NotFound(OrchestraError):
    """An unknown module, task or file."""

    http_status = 404
    exit_code = 3


class InvalidInput(OrchestraError):
    """Bad input from a user: metadata, arguments, sources, settings."""

    http_status = 400
    exit_code = 2


class InvalidMetadata(InvalidInput):
    """A metadata.json with one or more problems, each named with its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid metadata.json: " + "; ".join(problems), key="metadata")
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "problems": self.problems}


class Unauthorized(OrchestraError):
    """A changing request without the right bearer token."""

    http_status = 401
    exit_code = 2


class Forbidden(OrchestraError):
    """A change refused whoever asks: one sent from another origin (another site or port)."""

    http_status = 403
    exit_code = 2


class WrongState(OrchestraError):
    """The action does not fit the current state (a name taken, a task not finished...)."""

    http_status = 409
    exit_code = 4


class TooLarge(OrchestraError):
    """A body, archive or argument over its limit."""

    http_status = 413
    exit_code = 2


class SourceError(OrchestraError):
    """A source that cannot be fetched: missing folder, failed clone, unknown ref."""

    http_status = 400
    exit_code = 5


class InstallError(OrchestraError):
    """A failed installation step; carries the step and the installer's log."""

    http_status = 400
    exit_code = 6

    def __init__(self, step: str, message: str, *, log: str = "") -> None:
        super().__init__(f"{step} failed: {message}", key=step)
        self.step = step
        self.log = log

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "step": self.step, "log": self.log[-20000:]}


class TooManyRequests(OrchestraError):
    """A submitter over ORCHESTRA_MAX_QUEUED_PER_SUBMITTER; ``retry_after`` seconds to wait."""

    http_status = 429
    exit_code = 10

    def __init__(self, message: str, *, retry_after: int = 1, key: str | None = None) -> None:
        super().__init__(message, key=key)
        self.retry_after = retry_after


class Unreachable(OrchestraError):
    """A remote server (``--url``) that cannot be reached, or that stopped answering."""

    http_status = 502
    exit_code = 7


class SandboxUnavailable(OrchestraError):
    """ORCHESTRA_SANDBOX=required on a machine where the task sandbox does not work."""

    http_status = 503
    exit_code = 8


class InsufficientStorage(OrchestraError):
    """The disk of the data folder is full, or below ORCHESTRA_MIN_FREE_MB."""

    http_status = 507
    exit_code = 9


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # PostgreSQL's disk_full, as psycopg reports it


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it, or what a database driver wrapped) is a full disk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == _PG_DISK_FULL:
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError keeps the driver's
        if isinstance(orig, BaseException) and is_disk_full(orig):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full(folder: object) -> InsufficientStorage:
    """The error for a full disk under ``folder`` (the data folder)."""
    return InsufficientStorage(f"no space left on the disk of the data folder ({folder})")
