"""A retried call that keeps failing is told once, and its return once."""

from __future__ import annotations

import logging

import pytest

from orchestra.outages import Outage


def test_an_outage_tells_its_first_failure_and_its_return_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(logging.getLogger("test.outage"), "reaching the broker")
    with caplog.at_level("WARNING", logger="test.outage"):
        outage.worked()  # nothing had failed: nothing to tell
        for attempt in range(5):
            outage.failed(ConnectionError(f"refused {attempt}"))
        outage.worked()
        outage.worked()
        outage.failed(ConnectionError("refused again"))
    told = [r.getMessage() for r in caplog.records]
    assert told == [
        "reaching the broker failed (told once until it works again): refused 0",
        "reaching the broker works again",
        "reaching the broker failed (told once until it works again): refused again",
    ]
