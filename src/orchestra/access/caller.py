"""Who is asking right now: set by each front end around a request or a command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from orchestra.access.roles import Role, includes

LOCAL_NAME = "local"  # the command line on the server's own data folder
ANONYMOUS_NAME = "anonymous"  # a request without a token, where none is needed


@dataclass(frozen=True)
class Caller:
    """A token's name and role (or ``local``/``anonymous``), and the end user it acts for."""

    name: str
    role: Role | None  # None: no token was given (only what needs none is allowed)
    user: str | None = None

    @property
    def submitter(self) -> str:
        """The key fair share groups by: the token's name, with its user when given."""
        # token names never hold "/", so the pair reads back unambiguously
        return self.name if self.user is None else f"{self.name}/{self.user}"

    def may(self, needed: Role | str) -> bool:
        """True when this caller's role includes ``needed`` (a role or its name)."""
        return includes(self.role, Role(needed))


LOCAL = Caller(LOCAL_NAME, Role.ADMIN)
_CURRENT: ContextVar[Caller] = ContextVar("orchestra_caller", default=LOCAL)


def current() -> Caller:
    """The caller of the request or command being served (``local`` by default)."""
    return _CURRENT.get()


@contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Serve what runs inside as ``caller``."""
    token = _CURRENT.set(caller)
    try:
        yield caller
    finally:
        _CURRENT.reset(token)


def set_current(caller: Caller) -> object:
    """Make ``caller`` current until ``reset(mark)``; for request hooks that cannot nest."""
    return _CURRENT.set(caller)


def reset(mark: object) -> None:
    """Undo ``set_current``."""
    _CURRENT.reset(mark)  # type: ignore[arg-type]
