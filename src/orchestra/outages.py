"""Telling of a service that stays out of reach once, not at every retry.

Background loops (the sweep, the broker comparison, the NOTIFY listener, the kill listener)
retry every second or so; a database or broker that is down for minutes would otherwise
write hundreds of identical lines. An ``Outage`` tells the first failure and the recovery.
"""

from __future__ import annotations

import logging
import threading


class Outage:
    """The state of one retried call: logs its first failure and its return, once each."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, *, traceback: bool = False) -> None:
        """The call failed: told when it is the first failure since it last worked."""
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            self._logger.warning(
                "%s failed (told once until it works again): %s", self._what, exc,
                exc_info=exc if traceback else None,
            )  # fmt: skip

    def worked(self) -> None:
        """The call worked: told when it had failed before."""
        with self._lock:
            back, self._failing = self._failing, False
        if back:
            self._logger.warning("%s works again", self._what)
