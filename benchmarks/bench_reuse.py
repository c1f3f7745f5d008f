"""15. Answers reused: a deterministic module's earlier answer, through a real server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from context import Context
from harness import BenchError, Row, Stats, fmt_stats, fmt_value
from live import Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "reuse"
NUMBER = "15"
TARGET = 0.005  # seconds: the server's time to answer a reused request, at the median
METHOD = (
    "The no-op module declared `deterministic: true`, registered on `python -m orchestra "
    "serve` (sandbox on) and run once; then the same request (`?start=2020`) N times: each "
    "answer is `done` at once with `reused_from`, its output files hard links to the first "
    "task's. Server time: the request's own time as the server measures it (its "
    "`Server-Timing` header, from the request's arrival to its answer); round trip: the "
    "client's POST on a kept-alive connection. For comparison, the first (computed) task's "
    "request to `done`."
)


def run_bench(ctx: Context) -> list[Row]:
    """One computed answer, then N requests answered from it."""
    reps = ctx.reps(200, 10)
    scratch = ctx.folder(NAME)
    module = ctx.prepare("noop", scratch / "module")
    _declare_deterministic(module)
    with Server(orchestra_env(scratch / "home", ctx.uv_cache), scratch / "server.log") as server:
        module_id = server.register(module)
        start = time.perf_counter()
        server.wait(server.submit(module_id, {"start": "2020"}))
        computed = time.perf_counter() - start
        server_times, trips = _reused(server, module_id, reps)
    ctx.report.note(
        NAME,
        f"the first answer, computed: {fmt_value(computed, 's')} request to done; "
        f"round trip of a reused one: {fmt_stats(Stats(tuple(trips)), 's')}.",
    )
    stats = Stats(tuple(server_times))
    return [
        Row(
            NUMBER,
            "reused answer: the server's time for POST /module/<id>/run",
            f"{fmt_stats(stats, 's')}, p95 {fmt_value(stats.p95, 's')}",
            target=f"median < {fmt_value(TARGET, 's')}",
            met=stats.median < TARGET,
        )  # fmt: skip
    ]


def _declare_deterministic(module: Path) -> None:
    path = module / "metadata.json"
    meta = json.loads(path.read_text())
    meta["deterministic"] = True
    path.write_text(json.dumps(meta, indent=2))


def _reused(server: Server, module_id: int, reps: int) -> tuple[list[float], ...]:
    """The server's and the client's time for each of ``reps`` reused answers."""
    client = server.client
    server_times: list[float] = []
    trips: list[float] = []
    for _ in range(reps):
        start = time.perf_counter()
        status, body = client.request("POST", f"/module/{module_id}/run?start=2020")
        trips.append(time.perf_counter() - start)
        if status != 202 or body["status"] != "done":
            raise BenchError(f"a reused request answered {status}: {body}")
        if client.server_seconds is None:
            raise BenchError("the server sent no Server-Timing header")
        server_times.append(client.server_seconds)
    # each answer comes from the newest one before it: all share the first task's files
    if client.get(f"/task/{body['task']}")["reused_from"] is None:
        raise BenchError(f"task {body['task']} was not answered from an earlier one")
    return server_times, trips
