"""Executors run task processes; ``get_executor`` picks the configured one."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from orchestra.errors import InvalidInput

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import Executor

EXECUTORS = ("local", "celery")  # the values ORCHESTRA_EXECUTOR takes


@functools.cache
def get_executor(settings: Settings) -> Executor:
    """The executor that ``settings.executor`` names, one per settings value."""
    if settings.executor == "local":
        from orchestra.executors.local import LocalExecutor

        return LocalExecutor(settings)
    if settings.executor == "celery":
        from orchestra.executors.celery import CeleryExecutor

        return CeleryExecutor(settings)
    allowed = ", ".join(EXECUTORS)
    raise InvalidInput(f"executor: {settings.executor!r} is not one of {allowed}", key="executor")
