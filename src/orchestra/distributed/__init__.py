"""Tasks on other machines (SPEC §6): the Celery app, the worker, and what it asks of the API.

Celery, Redis's client and psycopg are the optional extra ``distributed``; nothing here is
imported unless ``ORCHESTRA_EXECUTOR=celery`` or ``orchestra worker`` asks for it.
"""

from __future__ import annotations

from orchestra.errors import OrchestraError

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
