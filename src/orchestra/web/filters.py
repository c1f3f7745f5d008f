"""How the pages show values: Markdown made safe, times, durations, sizes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import lru_cache

import nh3
from flask import Flask
from markupsafe import Markup

_LOGGER = logging.getLogger(__name__)
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_MD_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "a",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "del",
}  # fmt: skip


@lru_cache(maxsize=1)
def _markdown_parser():  # type: ignore[no-untyped-def]
    from markdown_it import MarkdownIt

    # raw HTML off in the parser, and the result sanitised anyway: two independent fences
    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


def markdown(text: str | None) -> Markup:
    """A module author's Markdown as HTML with nothing that can run (nh3 allow-list)."""
    rendered = _markdown_parser().render(text or "")
    clean = nh3.clean(
        rendered,
        tags=_MD_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return Markup(clean)  # sanitised just above: safe to mark as such


def when(moment: datetime | None) -> str:
    """A stored UTC time as ``2026-01-31 12:00:05``."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """Seconds as ``850 ms``, ``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def task_duration(started: datetime | None, finished: datetime | None) -> float | None:
    """How long a task ran, or has been running so far."""
    if started is None:
        return None
    end = finished or datetime.now(UTC).replace(tzinfo=None)
    return max(0.0, (end - started).total_seconds())


def figure(value: object) -> str:
    """A metric for a table: four significant digits, empty when there is none."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def size(count: int | None) -> str:
    """Bytes in binary units: ``1.5 MiB``."""
    value = float(count or 0)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def init_app(app: Flask) -> None:
    """Make the filters known to the templates."""
    app.add_template_filter(markdown, "markdown")
    app.add_template_filter(when, "when")
    app.add_template_filter(duration, "duration")
    app.add_template_filter(size, "size")
    app.add_template_filter(figure, "figure")
    app.add_template_global(task_duration, "task_duration")
