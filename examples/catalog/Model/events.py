"""Deterministic synthetic events: same arguments, same catalog."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Event:
    start: datetime
    stop: datetime
    parameter: str
    score: float


def score_for(parameter: str, moment: datetime) -> float:
    """A stable pseudo-random score in [0, 1) for one parameter and time."""
    digest = hashlib.sha256(f"{parameter}|{moment.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def find_events(
    parameter: str, start: datetime, stop: datetime, spacing: timedelta, min_score: float
) -> list[Event]:
    """One event per ``spacing`` from ``start``, each lasting a quarter of the spacing."""
    events = []
    moment = start
    while moment < stop:
        score = score_for(parameter, moment)
        if score >= min_score:
            end = min(moment + spacing / 4, stop)
            events.append(Event(moment, end, parameter, round(score, 4)))
        moment += spacing
    return events
