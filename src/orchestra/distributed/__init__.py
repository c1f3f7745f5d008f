"""Tasks on other machines: the Celery app, the worker, and what it asks of the API.

Celery, Redis's client and psycopg are the optional extra ``distributed``; nothing here is
imported unless ``ORCHESTRA_EXECUTOR=celery`` or ``orchestra worker`` asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestra.errors import InvalidInput, OrchestraError

if TYPE_CHECKING:
    from orchestra.config import Settings

EXTRA_HINT = "pip install '.[distributed]' in Orchestra's folder (the extra 'distributed')"


class MissingExtra(OrchestraError):
    """The optional packages of the distributed executor are not installed."""

    http_status = 500
    exit_code = 1


def require_extra() -> None:
    """Raise MissingExtra, saying what to install, unless celery, redis and psycopg import."""
    missing = []
    for name in ("celery", "redis", "psycopg"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(
            f"running tasks on workers needs {', '.join(missing)}: install them with {EXTRA_HINT}"
        )


def check_settings(settings: Settings, *, worker: bool) -> None:
    """InvalidInput naming each setting the celery executor needs and lacks.

    A worker and the API servers share the broker and the database, so both need those, and
    a database the machines can share (not SQLite); a worker also needs the API's address.
    """
    who = "a worker" if worker else "the celery executor"
    needed = {
        "broker_url": "ORCHESTRA_BROKER_URL (e.g. redis://host:6379/0)",
        "database_url": "ORCHESTRA_DATABASE_URL (the PostgreSQL database the API uses)",
    }
    if worker:
        needed["api_url"] = "ORCHESTRA_API_URL (e.g. http://api-host:8470)"
    missing = [text for name, text in needed.items() if not getattr(settings, name)]
    if missing:
        raise InvalidInput(f"{who} needs " + "; ".join(missing), key="executor")
    if settings.database_url.startswith("sqlite"):
        raise InvalidInput(
            f"{who} shares its database with the API servers and workers on other machines: "
            "ORCHESTRA_DATABASE_URL must name a server database such as PostgreSQL, not SQLite",
            key="database_url",
        )
