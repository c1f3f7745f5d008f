"""Free space on the disk of the data folder, and the floor below which Orchestra waits."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.errors import InsufficientStorage

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
MB = 1024 * 1024


def free_mb(settings: Settings) -> float:
    """MB free for this user on the disk of the data folder (infinite when it cannot be read)."""
    try:
        stat = os.statvfs(settings.home)
    except OSError:
        return float("inf")  # a missing folder is made (or fails) by whoever writes next
    return stat.f_bavail * stat.f_frsize / MB


def low(settings: Settings) -> bool:
    """True when the data folder has less free space than ORCHESTRA_MIN_FREE_MB."""
    return settings.min_free_mb > 0 and free_mb(settings) < settings.min_free_mb


def require(settings: Settings, what: str) -> None:
    """Refuse ``what`` (507) while the data folder is below its minimum of free space."""
    if low(settings):
        raise InsufficientStorage(
            f"{what} refused: {free_mb(settings):.0f} MB free on the disk of the data folder "
            f"({settings.home}), less than ORCHESTRA_MIN_FREE_MB={settings.min_free_mb}"
        )


# A few megabytes kept in reserve in the data folder: when a full disk refuses the write that
# settles a task, the reserve is given up so that no task stays `running` without a process.
RESERVE_MB = 4


def _reserve(settings: Settings) -> Path:
    return settings.home / "space-reserve"


def keep_reserve(settings: Settings) -> None:
    """Make the reserve if it is missing and the disk has room for it beyond the minimum."""
    path = _reserve(settings)
    if path.exists() or free_mb(settings) < settings.min_free_mb + 2 * RESERVE_MB:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # made meanwhile by another process, or the folder is not writable
    try:
        os.posix_fallocate(fd, 0, RESERVE_MB * MB)
    except OSError:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def release_reserve(settings: Settings) -> bool:
    """Give the reserve up; True when there was one to free."""
    try:
        _reserve(settings).unlink()
    except OSError:
        return False
    _LOGGER.warning("the disk of the data folder is full: its reserve of %s MB freed", RESERVE_MB)
    return True
