"""6. API latency with many finished tasks in the database, through the real server."""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from context import Context
from harness import BenchError, Row, Stats, fmt_stats, fmt_value
from live import Client, Server, home_database, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "api"
NUMBER = "6"
TARGET_ONE = 0.002  # seconds: median of GET /task/<id>
TARGET_PAGE = 0.020  # seconds: median of one page of GET /tasks
PAGE = 100
CHUNK = 10_000  # rows per INSERT batch while filling
METHOD = (
    "A no-op module registered and run once through a real server; the server stopped; that "
    "task's row copied N times straight into the database with SQLAlchemy (all `done`); the "
    "server started again. Each request timed on the client over one kept-alive "
    "http.client connection: GET /task/<id> at random ids, GET /tasks?limit=100 (first page), "
    "with offset=0.9·N, and with the cursor reached by walking next_cursor from the first "
    "page to about 0.9·N (the walk's own pages are timed too)."
)


def run_bench(ctx: Context) -> list[Row]:
    """Fill the database, then time single-task reads and task-list pages."""
    total = ctx.count(100_000, 2_000)
    with filled_server(ctx, NAME, total) as server:
        return _measure(ctx, server.client, total)


@contextmanager
def filled_server(ctx: Context, name: str, total: int) -> Iterator[Server]:
    """A real server on a database holding ``total`` finished tasks of one no-op module."""
    scratch = ctx.folder(name)
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    with Server(env, scratch / "server.log") as server:
        module_id = server.register(ctx.prepare("noop", scratch / "module"))
        server.wait(server.submit(module_id))
    ctx.log(f"{name}: filling the database with {total} finished tasks")
    fill_seconds = _fill(Path(env["ORCHESTRA_HOME"]), total)
    ctx.log(f"{name}: filled in {fill_seconds:.1f} s")
    with Server(env, scratch / "server-2.log") as server:
        yield server


def _measure(ctx: Context, client: Client, total: int) -> list[Row]:
    reads = ctx.count(1000, 20)
    pages = ctx.count(200, 10)
    deep = int(total * 0.9)
    ids = [random.randint(1, total) for _ in range(reads)]
    one = [_time(client, f"/task/{task_id}") for task_id in ids]
    first = [_time(client, f"/tasks?limit={PAGE}") for _ in range(pages)]
    by_offset = [_time(client, f"/tasks?limit={PAGE}&offset={deep}") for _ in range(pages)]
    cursor, walk = _walk(client, deep // PAGE)
    query = urllib.parse.urlencode({"limit": PAGE, "cursor": cursor})
    by_cursor = [_time(client, f"/tasks?{query}") for _ in range(pages)]
    ctx.report.note(
        NAME,
        f"walking {len(walk)} pages by cursor: {fmt_stats(Stats(tuple(walk)), 's')} per page.",
    )
    return [
        _row(f"GET /task/<id>, {total} tasks in the database", one, TARGET_ONE),
        _row(f"GET /tasks?limit={PAGE}, first page", first, TARGET_PAGE),
        _row(f"GET /tasks?limit={PAGE}&offset={deep}", by_offset, TARGET_PAGE),
        _row(f"GET /tasks?limit={PAGE}&cursor=… (~{deep} deep)", by_cursor, TARGET_PAGE),
    ]


def _row(label: str, values: list[float], target: float) -> Row:
    stats = Stats(tuple(values))
    return Row(
        NUMBER,
        label,
        f"{fmt_stats(stats, 's')}, p95 {fmt_value(stats.p95, 's')}",
        target=f"median < {fmt_value(target, 's')}",
        met=stats.median < target,
    )


def _time(client: Client, path: str) -> float:
    start = time.perf_counter()
    status, body = client.request("GET", path)
    seconds = time.perf_counter() - start
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body}")
    return seconds


def _walk(client: Client, pages: int) -> tuple[str, list[float]]:
    """Follow next_cursor ``pages`` times; the last cursor and each page's time."""
    times: list[float] = []
    path = f"/tasks?limit={PAGE}"
    cursor = ""
    for _ in range(max(1, pages)):
        start = time.perf_counter()
        status, body = client.request("GET", path)
        times.append(time.perf_counter() - start)
        if status != 200 or not body.get("next_cursor"):
            raise BenchError(f"GET {path} answered {status} without next_cursor")
        cursor = body["next_cursor"]
        path = "/tasks?" + urllib.parse.urlencode({"limit": PAGE, "cursor": cursor})
    return cursor, times


def _fill(home: Path, total: int) -> float:
    """Copy the one real task row until the table holds ``total`` tasks; seconds taken."""
    from sqlalchemy import insert, select

    from orchestra.storage.tables import TaskRow

    start = time.perf_counter()
    with home_database(home) as db:
        with db.read() as session:
            model = session.scalars(select(TaskRow).limit(1)).one()
            columns = [c.key for c in TaskRow.__table__.columns if c.key != "id"]
            template = {key: getattr(model, key) for key in columns}
        for done in range(1, total, CHUNK):
            batch = [dict(template) for _ in range(min(CHUNK, total - done))]
            with db.write() as session:
                session.execute(insert(TaskRow), batch)
    return time.perf_counter() - start
