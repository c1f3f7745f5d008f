"""Output previews: read from the first part of a file only; plots, tables, timelines."""

from __future__ import annotations

import re
from pathlib import Path

from orchestra.web.filters import markdown
from orchestra.web.previews import PREVIEW_BYTES, TABLE_ROWS, column_names, preview


def test_a_time_series_becomes_one_line_per_numeric_column(tmp_path: Path) -> None:
    path = tmp_path / "series.csv"
    path.write_text(
        "time,bx,by,label\n"
        "2020-01-01T00:00:00,1.5,-2,a\n"
        "2020-01-01T00:01:00Z,2.5,nan,b\n"
        "2020-01-01T00:02:00,3.5,4,c\n"
    )
    shown = preview("series.csv", path, "timeseries")
    assert shown.kind == "series" and not shown.truncated
    assert shown.plot is not None
    assert [s["name"] for s in shown.plot["series"]] == ["bx", "by"]
    assert shown.plot["t"] == [1577836800000, 1577836860000, 1577836920000]
    assert shown.plot["series"][1]["values"] == [-2.0, None, 4.0]


def test_a_catalog_skips_header_lines_and_gets_a_timeline(tmp_path: Path) -> None:
    path = tmp_path / "catalog.txt"
    path.write_text(
        "# Name: events\n# ListStartDate: 2020-01-01T00:00:00\n"
        "2020-01-01T00:00:00 2020-01-01T06:00:00 0.5\n"
        "2020-01-01T18:00:00 2020-01-02T00:00:00 0.9\n"
    )
    shown = preview("catalog.txt", path, "catalog", ("start", "stop"))
    assert shown.kind == "table"
    assert shown.columns == ("start", "stop", "column 3")
    assert shown.rows[1] == ("2020-01-01T18:00:00", "2020-01-02T00:00:00", "0.9")
    assert [(s.x, s.width) for s in shown.spans] == [(0.0, 250.0), (750.0, 250.0)]
    assert shown.span_range == ("2020-01-01 00:00", "2020-01-02 00:00")


def test_a_large_output_is_previewed_from_its_first_part_only(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    line = "2020-01-01T00:00:00,1.0\n"
    with path.open("w") as handle:
        handle.write("time,value\n")
        handle.write(line * (8 * PREVIEW_BYTES // len(line)))
    shown = preview("big.csv", path, "timeseries")
    assert shown.truncated
    assert shown.shown_rows == (PREVIEW_BYTES - len("time,value\n")) // len(line)
    assert len(shown.rows) == TABLE_ROWS
    assert shown.size == path.stat().st_size


def test_images_binary_and_plain_text(tmp_path: Path) -> None:
    (tmp_path / "plot.PNG").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "notes.txt").write_text("")
    assert preview("plot.PNG", tmp_path / "plot.PNG", "image").kind == "image"
    assert preview("blob.bin", tmp_path / "blob.bin", None).kind == "none"
    assert preview("notes.txt", tmp_path / "notes.txt", None).kind == "text"


def test_markdown_keeps_formatting_and_drops_anything_that_runs() -> None:
    html = markdown(
        "**bold** [ok](https://example.org) [bad](javascript:alert(1))\n\n"
        "<script>alert(1)</script><img src=x onerror=alert(2)>"
        '<a href="#" onclick="alert(3)">x</a>'
    )
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.org"' in html
    assert "<script" not in html and "<img" not in html
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)  # handlers only as escaped text
    assert 'href="javascript:' not in html


def test_column_names_come_from_the_declared_output_columns() -> None:
    output = {"columns": [{"name": "parameter", "type": "str"}, {"name": "score"}]}
    assert column_names("catalog", output) == ("start", "stop", "parameter", "score")
    assert column_names("timetable", {}) == ("start", "stop")
    assert column_names("timeseries", {"columns": ["bx", "by"]}) == ("bx", "by")
    assert column_names(None, None) == ()


def test_a_quoted_value_with_blanks_stays_one_cell_as_the_catalog_reads_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalog.txt"
    path.write_text(
        "# Name: events\n"
        '2020-01-01T00:00:00 2020-01-01T06:00:00 "a shock, then calm" 0.5\n'
        "2020-01-01T18:00:00\t2020-01-02T00:00:00\tquiet\t0.9\n"
    )
    shown = preview("catalog.txt", path, "catalog", ("start", "stop", "comment", "speed"))
    assert shown.columns == ("start", "stop", "comment", "speed")
    assert shown.rows[0] == ("2020-01-01T00:00:00", "2020-01-01T06:00:00",
                             "a shock, then calm", "0.5")  # fmt: skip
    # each line split at what it holds, as Orchestra reads catalogs
    assert shown.rows[1] == ("2020-01-01T18:00:00", "2020-01-02T00:00:00", "quiet", "0.9")
