"""Previews of a task's output files, read from their first part only.

A time series becomes data for a plot (time, then one line per numeric column); a catalog
or time table becomes rows and a timeline; an image is shown as it is. However large the
file, only its first ``PREVIEW_BYTES`` are read, and the page says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from orchestra import catalogs

_LOGGER = logging.getLogger(__name__)
PREVIEW_BYTES = 256 * 1024  # bytes of a file read for its preview
TABLE_ROWS = 100  # rows shown in a preview's table
PLOT_POINTS = 5000  # points per line in a plot
TIMELINE_SPANS = 500  # intervals drawn on a timeline
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp"}  # fmt: skip
_INTERVALS = {"catalog", "timetable"}


@dataclass(frozen=True)
class Span:
    """One interval on a timeline, placed on a 0..1000 scale."""

    x: float
    width: float
    label: str


@dataclass(frozen=True)
class Preview:
    """What a page shows of one output file."""

    name: str
    size: int
    kind: str  # series, table, image, text or none
    truncated: bool = False
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    plot: dict[str, Any] | None = None
    spans: tuple[Span, ...] = ()
    span_range: tuple[str, str] | None = None
    text: str = ""
    shown_rows: int = field(default=0)


def preview(name: str, path: Path, output_type: str | None, names: tuple[str, ...] = ()) -> Preview:
    """One output file's preview; ``names`` are its columns when the file has no header row."""
    size = path.stat().st_size
    if PurePosixPath(name).suffix.lower() in IMAGE_TYPES:
        return Preview(name, size, "image")
    with path.open("rb") as handle:
        head = handle.read(PREVIEW_BYTES)
    truncated = size > len(head)
    if b"\x00" in head:
        return Preview(name, size, "none", truncated)
    text = head.decode("utf-8", errors="replace")
    if truncated:
        text = text.rpartition("\n")[0]  # the last line may be cut in the middle
    columns, rows = _table(text, names)
    base = Preview(name, size, "text", truncated)
    if not rows:
        return replace(base, text=text[:20000])
    table = replace(
        base, kind="table", columns=columns, rows=tuple(rows[:TABLE_ROWS]), shown_rows=len(rows)
    )
    if output_type in _INTERVALS:
        spans, span_range = _timeline(rows)
        return replace(table, spans=spans, span_range=span_range)
    plot = _plot(columns, rows)
    return table if plot is None else replace(table, kind="series", plot=plot)


def _table(text: str, names: tuple[str, ...]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    # lines starting with '#' are comments or an AMDA header: not data
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        return (), []
    # split as the catalogs are read: each line at its separator, CSV quoting honoured
    rows = [tuple(catalogs.fields(line)) for line in lines]
    if rows[0] and parse_time(rows[0][0]) is None:
        header, data = rows[0], rows[1:]
    else:
        width = len(rows[0])
        header = names[:width] + tuple(f"column {i + 1}" for i in range(len(names), width))
        data = rows
    return header, data


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (naive ones are UTC), or None."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _plot(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> dict[str, Any] | None:
    points = []
    for row in rows[:PLOT_POINTS]:
        moment = parse_time(row[0]) if row else None
        if moment is not None:
            points.append((moment, row))
    if not points:
        return None
    series = []
    for index in range(1, len(columns)):
        values = [_number(row[index]) if index < len(row) else None for _, row in points]
        if any(value is not None for value in values):
            series.append({"name": columns[index], "values": values})
    if not series:
        return None
    times = [int(moment.timestamp() * 1000) for moment, _ in points]
    return {"t": times, "series": series, "time": columns[0]}


def column_names(output_type: str | None, output: object) -> tuple[str, ...]:
    """The columns a module declares for its output (``output.columns``), after start, stop."""
    declared = output.get("columns") if isinstance(output, dict) else None
    if not isinstance(declared, list):
        return ("start", "stop") if output_type in _INTERVALS else ()
    names = tuple(str(item.get("name") if isinstance(item, dict) else item) for item in declared)
    return ("start", "stop", *names) if output_type in _INTERVALS else names


def _timeline(rows: list[tuple[str, ...]]) -> tuple[tuple[Span, ...], tuple[str, str] | None]:
    intervals = []
    for row in rows[:TIMELINE_SPANS]:
        start = parse_time(row[0]) if row else None
        stop = parse_time(row[1]) if len(row) > 1 else None
        if start is not None and stop is not None:
            intervals.append((start, max(start, stop), " – ".join(row[:2])))
    if not intervals:
        return (), None
    low = min(start for start, _, _ in intervals)
    high = max(stop for _, stop, _ in intervals)
    scale = 1000 / max((high - low).total_seconds(), 1e-9)
    spans = tuple(
        Span(
            round((start - low).total_seconds() * scale, 2),
            round(max((stop - start).total_seconds() * scale, 2), 2),
            label,
        )
        for start, stop, label in intervals
    )
    return spans, (low.strftime("%Y-%m-%d %H:%M"), high.strftime("%Y-%m-%d %H:%M"))
