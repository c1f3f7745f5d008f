"""10. Access: what judging a token costs a read, and a fair-share claim's time."""

from __future__ import annotations

import http.client
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from context import Context
from harness import ROOT, BenchError, Row, Stats, fmt_stats, fmt_value
from live import Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "access"
NUMBER = "10"
TARGET_AUTH = 0.0002  # seconds: what a role token may add to GET /task/<id> at the median
TARGET_CLAIM = 0.005  # seconds: median of one fair-share claim among the queued tasks
SUBMITTERS = 100
METHOD = (
    "Authorisation: two real servers side by side, one without any token, one with "
    "ORCHESTRA_API_TOKEN and a `read` token made through POST /tokens; each runs one no-op "
    "task; GET /task/<id> alternates between them over kept-alive connections, the second "
    "carrying the read token (looked up in the database at every request). Fair share: N "
    "queued tasks from 100 submitters inserted straight into a fresh database (SQLite in a "
    "data folder, and PostgreSQL), then claims timed one by one: the local executor's claim "
    "under ORCHESTRA_MAX_RUNNING (`lifecycle.claim_next`, under its slot lock) and a worker's "
    "claim of its queue's fairest task (`lifecycle.claim_fairest`)."
)


def run_bench(ctx: Context) -> list[Row]:
    """Authorisation cost through real servers, then claims on SQLite and PostgreSQL."""
    rows = [_authorisation(ctx)]
    total = ctx.count(100_000, 2_000)
    scratch = ctx.folder(NAME)
    rows += _claims(ctx, f"sqlite:///{scratch / 'claims.db'}", "SQLite", total)
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import find_binaries, start_server

    binaries = find_binaries()
    if binaries is None:
        raise BenchError("the fair-share benchmark needs PostgreSQL's binaries")
    postgres = start_server(binaries)
    try:
        rows += _claims(ctx, postgres.new_database(), "PostgreSQL", total)
    finally:
        postgres.stop()
    return rows


class _Reader:
    """A kept-alive connection sending GETs, with a bearer token or without."""

    def __init__(self, port: int, token: str = "") -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> float:
        """Seconds one GET took; BenchError unless it answers 200."""
        start = time.perf_counter()
        self._conn.request("GET", path, headers=self._headers)
        answer = self._conn.getresponse()
        answer.read()
        seconds = time.perf_counter() - start
        if answer.status != 200:
            raise BenchError(f"GET {path} answered {answer.status}")
        return seconds

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _authorisation(ctx: Context) -> Row:
    scratch = ctx.folder(f"{NAME}-auth")
    module = ctx.prepare("noop", scratch / "module")
    plain_env = orchestra_env(scratch / "plain", ctx.uv_cache)
    guarded_env = orchestra_env(scratch / "guarded", ctx.uv_cache, api_token="bench-admin")
    with Server(plain_env, scratch / "plain.log") as plain:
        plain_task = plain.submit(plain.register(module))
        plain.wait(plain_task)
        with Server(guarded_env, scratch / "guarded.log") as guarded:
            token, guarded_task = _guarded_task(guarded.port, module)
            return _compare(ctx, (plain.port, plain_task), (guarded.port, guarded_task), token)


def _guarded_task(port: int, module: Path) -> tuple[str, int]:
    """On a server with tokens: a read token, and one done task (made with the admin one)."""
    admin = {"Authorization": "Bearer bench-admin", "Content-Type": "application/json"}
    made = _call(port, "POST", "/tokens", {"name": "reader", "role": "read"}, admin)
    module_id = _call(port, "POST", "/modules", {"source": str(module)}, admin)["id"]
    deadline = time.monotonic() + 600
    while _call(port, "GET", f"/module/{module_id}", None, admin)["status"] == "installing":
        if time.monotonic() > deadline:
            raise BenchError("the module did not install")
        time.sleep(0.05)
    task = _call(port, "POST", f"/module/{module_id}/run", {}, admin)["task"]
    _call(port, "GET", f"/task/{task}?wait=60", None, admin)
    return str(made["token"]), int(task)


def _call(port: int, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)  # fmt: skip
        answer = conn.getresponse()
        data = answer.read()
        if answer.status >= 400:
            raise BenchError(f"{method} {path} answered {answer.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


def _compare(ctx: Context, plain: tuple[int, int], guarded: tuple[int, int], token: str) -> Row:
    reads = ctx.count(2000, 100)
    without, with_token = _Reader(plain[0]), _Reader(guarded[0], token)
    try:
        for _ in range(50):  # warm both: pools, caches, the token's last use written
            without.get(f"/task/{plain[1]}")
            with_token.get(f"/task/{guarded[1]}")
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(reads):
            times[0].append(without.get(f"/task/{plain[1]}"))
            times[1].append(with_token.get(f"/task/{guarded[1]}"))
    finally:
        without.close()
        with_token.close()
    bare, judged = Stats(tuple(times[0])), Stats(tuple(times[1]))
    added = judged.median - bare.median
    ctx.report.note(NAME, f"GET /task/<id> without tokens: {fmt_stats(bare, 's')}; with a "
                          f"read token: {fmt_stats(judged, 's')}.")  # fmt: skip
    return Row(
        NUMBER, "GET /task/<id> with a role token vs. a server without tokens",
        f"+{fmt_value(added, 's')} ({fmt_value(judged.median, 's')} vs "
        f"{fmt_value(bare.median, 's')}, n={reads})",
        target=f"≤ +{fmt_value(TARGET_AUTH, 's')}", met=added <= TARGET_AUTH,
    )  # fmt: skip


def _claims(ctx: Context, url: str, kind: str, total: int) -> list[Row]:
    from orchestra.storage.db import Database
    from orchestra.tasks import lifecycle

    db = Database(url)
    try:
        db.create_schema()
        ctx.log(f"{NAME}: {total} queued tasks from {SUBMITTERS} submitters on {kind}")
        _fill(db, total)
        claims = ctx.count(300, 30)
        local = _timed(claims, lambda: lifecycle.claim_next(db, 10**9, "bench"))
        worker = _timed(claims, lambda: lifecycle.claim_fairest(db, "w", "default"))
    finally:
        db.dispose()
    return [
        _claim_row(f"fair-share claim (local executor), {total} queued, {kind}", local),
        _claim_row(f"fair-share claim (a worker's), {total} queued, {kind}", worker),
    ]


def _timed(count: int, claim: Any) -> Stats:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        if claim() is None:
            raise BenchError("a claim found no queued task")
        times.append(time.perf_counter() - start)
    return Stats(tuple(times))


def _claim_row(label: str, stats: Stats) -> Row:
    return Row(
        NUMBER, label, f"{fmt_stats(stats, 's')}, p95 {fmt_value(stats.p95, 's')}",
        target=f"median < {fmt_value(TARGET_CLAIM, 's')}", met=stats.median < TARGET_CLAIM,
    )  # fmt: skip


def _fill(db: Any, total: int) -> None:
    """``total`` queued tasks of one module, their submitters taking turns."""
    from sqlalchemy import insert, select

    from orchestra.storage.tables import ModuleRow, TaskRow
    from orchestra.tasks.lifecycle import now

    moment = now()
    with db.begin_write() as connection:
        connection.execute(insert(ModuleRow), [{
            "name": "bench", "status": "installed", "description": "", "source": "bench",
            "source_kind": "folder", "install_log": "", "created": moment, "updated": moment,
        }])  # fmt: skip
        module_id = connection.execute(select(ModuleRow.id)).scalar()
    for start in range(0, total, 10_000):
        rows = [{"module_id": module_id, "status": "queued", "args": {}, "created": moment,
                 "executor": "local", "kill_requested": False, "submitted_by": f"s{i % 100}",
                 "submitter": f"s{i % 100}", "queue": "default"}
                for i in range(start, min(total, start + 10_000))]  # fmt: skip
        with db.begin_write() as connection:
            connection.execute(insert(TaskRow), rows)
