"""Roles and what each may do; a rule is the set of roles a route is open to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """A token's role; each of the first four may do what the one before it may."""

    READ = "read"
    RUN = "run"
    OPERATE = "operate"
    ADMIN = "admin"
    WORKER = "worker"


LADDER = (Role.READ, Role.RUN, Role.OPERATE, Role.ADMIN)
ROLES = tuple(role.value for role in Role)


def role_of(text: str) -> Role:
    """The role named ``text``; InvalidInput naming the roles otherwise."""
    from orchestra.errors import InvalidInput

    try:
        return Role(text)
    except ValueError:
        raise InvalidInput(
            f"role: {text[:50]!r} is not one of {', '.join(ROLES)}", key="role"
        ) from None


def at_least(role: Role) -> frozenset[Role]:
    """The roles of the ladder that may do what ``role`` may."""
    return frozenset(LADDER[LADDER.index(role) :])


def includes(role: Role | None, needed: Role) -> bool:
    """True when ``role`` may do what ``needed`` may."""
    if role is None:
        return False
    if needed == Role.WORKER or role == Role.WORKER:
        return role == needed
    return role in at_least(needed)


@dataclass(frozen=True)
class Rule:
    """Who may call a route: the least role it needs, and whether a call without a token may.

    ``anonymous``: ``always`` (``/health``, the sign-in page), ``reads`` (unless
    ``ORCHESTRA_PROTECT_READS`` is set) or ``never``.
    """

    needed: Role | None  # None: any token at all, whatever its role
    anonymous: str = "never"

    def allows(self, role: Role) -> bool:
        """True when a token of ``role`` may call the route."""
        return self.needed is None or includes(role, self.needed)
