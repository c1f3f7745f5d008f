"""What ``serve`` and ``worker`` check before they start: the database and the broker answer.

A service that cannot log in to its database or broker would fail its first request, or
every task, with a traceback far from the cause. Checked once at the start, each failure is
one line and one exit code: a refused login, a missing database or a broker asking for a
password is the settings' fault (``InvalidInput``, exit 2: starting again will not help);
a server out of reach is ``Unreachable`` (exit 7: a supervisor such as systemd tries again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestra.config import hide_password
from orchestra.errors import InvalidInput, OrchestraError, Unreachable

if TYPE_CHECKING:
    from orchestra.config import Settings

CONNECT_TIMEOUT = 10  # seconds a first connection may take
# what PostgreSQL and libpq say when the login, not the network, is the problem
_REFUSED = ("password authentication failed", "no password supplied", "does not exist",
            "authentication failed", "no pg_hba.conf entry", "permission denied")  # fmt: skip


def check(settings: Settings, *, worker: bool = False) -> None:
    """Raise one OrchestraError unless the database (and the broker, if any) take us."""
    uses_broker = worker or settings.executor == "celery"
    if uses_broker:  # a setting that is missing is said before a server that refuses
        from orchestra.distributed import check_settings, require_extra

        require_extra()
        check_settings(settings, worker=worker)
    check_database(settings.db_url)
    if uses_broker:
        check_broker(settings.broker_url)


def check_database(url: str) -> None:
    """Connect once to a server database; SQLite needs no check."""
    if url.startswith("sqlite"):
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    args = {"connect_timeout": CONNECT_TIMEOUT} if url.startswith("postgresql") else {}
    engine = create_engine(url, connect_args=args, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise database_error(url, exc) from exc
    finally:
        engine.dispose()


def database_error(url: str, exc: BaseException) -> OrchestraError:
    """The one-line error for a failed connection to the database at ``url``."""
    cause = _first_line(getattr(exc, "orig", None) or exc)
    where = hide_password(url)
    if any(words in cause for words in _REFUSED):
        return InvalidInput(
            f"the database {where} refuses this login: {cause} "
            "(ORCHESTRA_DATABASE_URL names the user, its password and the database)",
            key="database_url",
        )
    return Unreachable(f"cannot reach the database {where}: {cause}", key="database_url")


def check_broker(url: str) -> None:
    """Ping the Redis broker once."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise InvalidInput(
            f"the broker {hide_password(url)} refuses this login: {_first_line(exc)} "
            "(give its password in ORCHESTRA_BROKER_URL: redis://:PASSWORD@host:6379/0)",
            key="broker_url",
        ) from exc
    except redis.ResponseError as exc:  # e.g. NOAUTH from an older server
        if "auth" not in str(exc).lower():
            raise
        raise InvalidInput(
            f"the broker {hide_password(url)} wants a password: {_first_line(exc)} "
            "(give it in ORCHESTRA_BROKER_URL: redis://:PASSWORD@host:6379/0)",
            key="broker_url",
        ) from exc
    except redis.RedisError as exc:
        raise Unreachable(
            f"cannot reach the broker {hide_password(url)}: {_first_line(exc)}", key="broker_url"
        ) from exc
    finally:
        client.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text.removeprefix("connection failed: ")
    return " ".join(text.split()) if text else type(exc).__name__
