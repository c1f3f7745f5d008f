"""8. Dashboard pages with many tasks in the database, through the real server."""

from __future__ import annotations

import http.client
import json
import logging
import random

from bench_api import filled_server
from context import Context
from harness import BenchError, Row, Stats, fmt_stats, fmt_value

_LOGGER = logging.getLogger(__name__)

NAME = "dashboard"
NUMBER = "8"
TARGET = 0.050  # seconds: median server time of one page
METHOD = (
    "A no-op module registered and run once through a real server; that task's row copied N "
    "times into the database (as for the API benchmark); the server started again. Each page "
    "fetched over one kept-alive connection; the figure is the server's own time from its "
    "`Server-Timing` header (routing, database, template), without the network and client: "
    "GET /ui/tasks (first page of 50, with the module filter's list), the same filtered by "
    "status, an older page by cursor, and GET /ui/task/<id> at random ids."
)


def run_bench(ctx: Context) -> list[Row]:
    """Fill the database, then time the task list and task pages."""
    total = ctx.count(100_000, 2_000)
    with filled_server(ctx, NAME, total) as server:
        return _measure(ctx, server.port, total)


def _measure(ctx: Context, port: int, total: int) -> list[Row]:
    reps = ctx.count(200, 10)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        cursor = _older_cursor(conn)
        pages = {
            "GET /ui/tasks (first page)": ["/ui/tasks"] * reps,
            "GET /ui/tasks?status=done": ["/ui/tasks?status=done"] * reps,
            "GET /ui/tasks?cursor=… (second page)": [f"/ui/tasks?cursor={cursor}"] * reps,
            "GET /ui/task/<id>": [f"/ui/task/{random.randint(1, total)}" for _ in range(reps)],
        }
        return [
            _row(f"{label}, {total} tasks", [_server_time(conn, path) for path in paths])
            for label, paths in pages.items()
        ]
    finally:
        conn.close()


def _older_cursor(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/tasks?limit=50")
    response = conn.getresponse()

    body = json.loads(response.read())
    if not body.get("next_cursor"):
        raise BenchError("GET /tasks gave no next_cursor")
    return str(body["next_cursor"])


def _server_time(conn: http.client.HTTPConnection, path: str) -> float:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise BenchError(f"GET {path} answered {response.status}")
    timing = response.getheader("Server-Timing") or ""
    if "dur=" not in timing:
        raise BenchError(f"GET {path}: no Server-Timing header")
    return float(timing.split("dur=", 1)[1]) / 1000


def _row(label: str, values: list[float]) -> Row:
    stats = Stats(tuple(values))
    return Row(
        NUMBER,
        label,
        f"{fmt_stats(stats, 's')}, p95 {fmt_value(stats.p95, 's')}",
        target=f"median < {fmt_value(TARGET, 's')}",
        met=stats.median < TARGET,
    )
