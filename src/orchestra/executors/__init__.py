"""Executors run task processes; ``get_executor`` picks the configured one."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import Executor


@functools.cache
def get_executor(settings: Settings) -> Executor:
    """The executor for these settings (only "local" so far), one per settings value."""
    from orchestra.executors.local import LocalExecutor

    return LocalExecutor(log_dir=settings.home)
