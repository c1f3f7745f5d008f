"""API tokens: made at random, kept only as SHA-256, looked up on every request.

A token is 256 random bits; its SHA-256 is all the database keeps, and a request's token is
found by its digest and compared in constant time (PITFALLS #24: no slow password hash is
needed for random secrets). Every request looks its token up in the database, so a
revocation holds at once on every server sharing it; the lookup is one indexed read on a
pooled connection. The last use is written at most once a minute per token and server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, func, select, update

from orchestra.access import audit
from orchestra.access.caller import Caller, current
from orchestra.access.roles import Role, role_of
from orchestra.errors import InvalidInput, NotFound, Unauthorized, WrongState
from orchestra.records import NewToken, TokenInfo
from orchestra.storage.tables import TokenRow

if TYPE_CHECKING:
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
BOOTSTRAP = "bootstrap"  # the name ORCHESTRA_API_TOKEN answers to, as an admin token
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
TOKEN_BYTES = 32  # 256 random bits
MAX_EXPIRY_DAYS = 36500.0
LAST_USE_EVERY = 60.0  # seconds: a token's last use is written at most this often per server
ENABLED_CHECK = 1.0  # seconds between looks at whether any token exists (while none does)
_SESSION_KEY = b"orchestra dashboard session"
_TOKENS: Table = TokenRow.__table__  # type: ignore[assignment]
_C = _TOKENS.c
_BY_DIGEST = select(_C.name, _C.role, _C.digest, _C.expires, _C.revoked).where(
    _C.digest == bindparam("digest")
)
_BY_SESSION = select(_C.name, _C.role, _C.session_digest, _C.expires, _C.revoked).where(
    _C.session_digest == bindparam("digest")
)
_ANY_LIVE = select(func.count()).select_from(_TOKENS).where(_C.revoked.is_(None))
_TOUCH = update(_TOKENS).where(_C.digest == bindparam("d")).values(last_used=bindparam("t"))


def digest(secret: str) -> str:
    """The hex SHA-256 that the database keeps of a token."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def session_value(secret: str) -> str:
    """What the dashboard's cookie holds: derived from the token, so the token never travels."""
    return hmac.new(secret.encode(), _SESSION_KEY, hashlib.sha256).hexdigest()


def check_name(name: str) -> str:
    """A valid token name; InvalidInput naming the rule otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = str(name)[:80]
        raise InvalidInput(
            f"name: {shown!r} is not a token name ([a-z][a-z0-9_-]{{0,63}})", key="name"
        )
    return name


def _now() -> datetime:
    from orchestra.tasks.lifecycle import now

    return now()


class TokenStore:
    """Tokens in the database, plus ``ORCHESTRA_API_TOKEN`` as the admin token ``bootstrap``."""

    def __init__(self, db: Database, bootstrap: str = "") -> None:
        self.db = db
        self._bootstrap = digest(bootstrap) if bootstrap else ""
        self._bootstrap_session = digest(session_value(bootstrap)) if bootstrap else ""
        self._touched: dict[str, float] = {}  # digest -> when this server last wrote its use
        self._lock = threading.Lock()
        self._some_exist = False
        self._looked = -ENABLED_CHECK

    # -- whether tokens are needed --------------------------------------------------------

    def enabled(self) -> bool:
        """True when ``ORCHESTRA_API_TOKEN`` is set or a token exists (then tokens are needed).

        Once one exists, tokens stay needed for the life of the server: revoking the last one
        must not open the API.
        """
        if self._bootstrap or self._some_exist:
            return True
        moment = time.monotonic()
        if moment - self._looked >= ENABLED_CHECK:
            with self.db.connect() as connection:
                self._some_exist = bool(connection.execute(_ANY_LIVE).scalar())
            self._looked = moment
        return self._some_exist

    # -- judging a request ----------------------------------------------------------------

    def identify(self, secret: str, user: str | None = None) -> Caller:
        """The caller a bearer token stands for; Unauthorized saying why it is refused."""
        return self._identify(digest(secret), self._bootstrap, _BY_DIGEST, "digest", user)

    def identify_session(self, value: str, user: str | None = None) -> Caller:
        """The caller a dashboard cookie stands for; Unauthorized saying why it is refused."""
        return self._identify(
            digest(value), self._bootstrap_session, _BY_SESSION, "session_digest", user
        )

    def _identify(
        self, given: str, bootstrap: str, query: Any, column: str, user: str | None
    ) -> Caller:
        if bootstrap and hmac.compare_digest(given, bootstrap):
            return Caller(BOOTSTRAP, Role.ADMIN, user)
        with self.db.connect() as connection:
            found = connection.execute(query, {"digest": given}).first()
        if found is None or not hmac.compare_digest(getattr(found, column), given):
            raise Unauthorized(
                "unknown token in 'Authorization: Bearer <token>': never made here, or mistyped"
            )
        if found.revoked is not None:
            raise Unauthorized(f"token {found.name!r} was revoked")
        if found.expires is not None and found.expires <= _now():
            when = f"{found.expires:%Y-%m-%d %H:%M} UTC"
            raise Unauthorized(f"token {found.name!r} expired at {when}")
        if column == "digest":
            self._touch(given)
        return Caller(found.name, Role(found.role), user)

    def _touch(self, token_digest: str) -> None:
        moment = time.monotonic()
        with self._lock:
            if moment - self._touched.get(token_digest, -LAST_USE_EVERY) < LAST_USE_EVERY:
                return
            self._touched[token_digest] = moment
        try:
            with self.db.begin_write() as connection:
                connection.execute(_TOUCH, {"d": token_digest, "t": _now()})
        except Exception as exc:  # a busy database must not refuse the request for this
            _LOGGER.info("last use of a token not recorded: %s", exc)

    # -- managing -------------------------------------------------------------------------

    def create(self, name: str, role: str, expires_days: float | None = None) -> NewToken:
        """Make a token; its secret is in the answer and nowhere else."""
        check_name(name)
        chosen = role_of(role)
        expires = _expiry(expires_days)
        if name == BOOTSTRAP and self._bootstrap:
            raise WrongState(f"token name {name!r} is taken by ORCHESTRA_API_TOKEN", key="name")
        secret = secrets.token_urlsafe(TOKEN_BYTES)
        who = current().name
        with self.db.write() as session:
            if self._live(session, name) is not None:
                raise WrongState(f"a token named {name!r} exists: revoke it first", key="name")
            session.add(TokenRow(
                name=name, role=chosen.value, digest=digest(secret), created=_now(),
                session_digest=digest(session_value(secret)), expires=expires,
            ))  # fmt: skip
            detail = f"role {chosen.value}" + (f", expires {expires:%Y-%m-%d}" if expires else "")
            audit.record(session, who, "token.create", f"token {name}", audit.OK, detail)
        self._some_exist = True
        return NewToken(name, chosen.value, secret, expires)

    def list(self) -> list[TokenInfo]:
        """The tokens not revoked, by name (expired ones too, until revoked)."""
        query = select(TokenRow).where(TokenRow.revoked.is_(None)).order_by(TokenRow.name)
        with self.db.read() as session:
            rows = list(session.scalars(query))
        return [TokenInfo(r.name, r.role, r.created, r.expires, r.last_used) for r in rows]

    def revoke(self, name: str) -> TokenInfo:
        """Revoke the live token ``name``: refused from the next request on, on every server."""
        check_name(name)
        with self.db.write() as session:
            row = self._live(session, name)
            if row is None:
                raise NotFound(f"no token named {name!r}")
            row.revoked = _now()
            audit.record(session, current().name, "token.revoke", f"token {name}", audit.OK)
            return TokenInfo(row.name, row.role, row.created, row.expires, row.last_used)

    @staticmethod
    def _live(session: Any, name: str) -> TokenRow | None:
        query = select(TokenRow).where(TokenRow.name == name, TokenRow.revoked.is_(None))
        return session.scalars(query).first()  # type: ignore[no-any-return]


def _expiry(days: float | None) -> datetime | None:
    if days is None:
        return None
    number = isinstance(days, int | float) and not isinstance(days, bool)
    if not number or not 0 < days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(
            f"expires: {days!r} is not a number of days between 0 and {MAX_EXPIRY_DAYS:g}",
            key="expires",
        )
    return _now() + timedelta(days=float(days))
