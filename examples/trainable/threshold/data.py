"""Synthetic samples between two times: a field magnitude, and whether it was an event."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

STEP = timedelta(minutes=10)
HIDDEN_THRESHOLD = 12.0  # nT: above it (give or take the noise), an event


def parse_time(text: str) -> datetime:
    """An ISO 8601 time."""
    return datetime.fromisoformat(text.replace("Z", ""))


def samples(start: str, stop: str) -> list[tuple[datetime, float, int]]:
    """(time, magnitude, label) every ten minutes; the same times always give the same values."""
    begin, end = parse_time(start), parse_time(stop)
    found = []
    moment = begin
    while moment < end:
        rng = random.Random(int(moment.timestamp()))
        magnitude = 10 + 4 * math.sin(moment.timestamp() / 7200) + rng.gauss(0, 1.5)
        label = 1 if magnitude + rng.gauss(0, 0.5) > HIDDEN_THRESHOLD else 0
        found.append((moment, magnitude, label))
        moment += STEP
    return found
