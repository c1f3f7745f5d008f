"""9. The Celery executor: task overhead, throughput on 2 and 4 workers, many tasks at once."""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from context import Context
from floors import celery_floor, database_floor, upload_floor
from harness import (
    ROOT,
    BenchError,
    Row,
    Stats,
    alternate,
    fmt_delta,
    fmt_stats,
    fmt_value,
    tree_cpu,
)
from live import Cluster, Server, orchestra_env

_LOGGER = logging.getLogger(__name__)
_ANSWERED = re.compile(r"^orchestra_request_seconds_count\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')

NAME = "celery"
NUMBER = "9"
TARGET_OVERHEAD = 0.015  # seconds the Celery executor may add to a no-op task at the median
TARGET_CPU = 0.003  # seconds of coordinator CPU (API server, PostgreSQL, Redis) per task
WORKERS, CONCURRENCY = 8, 8  # the capacity run's workers and the tasks each runs at once
SLEEP = 2.0  # seconds each task of the capacity run sleeps: the workers' CPU is not the limit
ROUNDS = 5  # tasks in the capacity run, in multiples of the slots
WARMUP = 5
BLOCK = 10  # measurements of one side in a row (see harness.alternate)
FLOOR_COUNT = 2000  # operations each floor is measured over
METHOD = (
    "A real Redis and PostgreSQL started in the scratch folder (the test suite's fixtures), "
    "`python -m orchestra serve` with ORCHESTRA_EXECUTOR=celery on a fresh database, and "
    "`python -m orchestra worker` processes (each its own data folder) on the same machine. "
    "Overhead: a no-op task from POST /module/<id>/run to the waiting client holding `done`, "
    "through one worker (concurrency 1), interleaved in blocks of ten with the same through "
    "a local server (SQLite). Coordinator capacity: 8 workers × concurrency 8 run tasks of "
    "benchmarks/modules/sleep that sleep 2 s (the workers' CPU is not what limits them), "
    "5 rounds of the 64 slots submitted at once and each awaited by a client (GET "
    "/task/<id>?wait=), after one untimed round in which every worker builds the "
    "environment; CPU per task of the API server process, of PostgreSQL (the postmaster and "
    "every backend, those ended included) and of Redis, from /proc over the run. A "
    "coordinator core keeps L / (CPU per task) worker slots busy with tasks of L seconds. "
    "Flood: M tasks submitted at once through 4 workers; every task must end `done` and each "
    "worker's log must name each task it ran once; the submission rate and the server's "
    "resident memory at the end. The capacity run also counts, per task, the requests the API "
    "answered by route (its /metrics) and the transactions PostgreSQL committed (its "
    "statistics). Floors (benchmarks/floors.py), each alone on the same "
    "machine: Orchestra's Celery app in a worker process whose task only counts, messages "
    "published back to back; a worker's two writes per task (the claim, the finish with its "
    "NOTIFY) in plain psycopg on the same PostgreSQL; one 3-byte output sent by PUT to the "
    "least Flask app on waitress, over a kept-alive connection."
)


def run_bench(ctx: Context) -> list[Row]:
    """Start the services once; overhead, throughput and flood on fresh databases."""
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import find_binaries, start_server
    from tests.support.redis import RedisServer

    binaries, redis = find_binaries(), shutil.which("redis-server")
    if binaries is None or redis is None:
        raise BenchError("the Celery benchmark needs PostgreSQL's binaries and redis-server")
    scratch = ctx.folder("celery")
    postgres = start_server(binaries)
    broker = RedisServer(redis, scratch / "redis")
    broker.start()
    try:
        module = ctx.prepare("noop", scratch / "module")
        rows = _overhead(ctx, scratch, module, postgres, broker)
        rows += _capacity(ctx, scratch, postgres, broker)
        ctx.report.note(NAME, _floor_note(ctx, scratch, postgres, broker))
        rows.append(_flood(ctx, scratch, module, postgres, broker))
        return rows
    finally:
        broker.stop()
        postgres.stop()


def _overhead(
    ctx: Context, scratch: Path, module: Path, postgres: object, broker: object
) -> list[Row]:
    reps = ctx.reps(60, 5)
    cluster = Cluster(ctx, scratch / "overhead", postgres, broker)
    local = Server(orchestra_env(scratch / "overhead-local", ctx.uv_cache), scratch / "local.log")
    try:
        cluster.add_workers(1)
        remote_id, local_id = cluster.server.register(module), local.register(module)
        sides = [
            lambda: _timed_task(cluster.server, remote_id),
            lambda: _timed_task(local, local_id),
        ]
        alternate(WARMUP, sides)  # the worker builds its environment at the first task
        ctx.log(f"celery overhead: {reps} rep(s) of one worker / local")
        remote, here = alternate(reps, sides, ctx.log if ctx.quick else None, block=BLOCK)
    finally:
        local.stop()
        cluster.close()
    mine, theirs = Stats(tuple(remote)), Stats(tuple(here))
    extra = mine.median - theirs.median
    return [
        Row(
            NUMBER,
            "celery: no-op task, request to `done`, 1 worker vs local executor",
            fmt_stats(mine, "s"),
            fmt_stats(theirs, "s"),
            f"{fmt_delta(extra)} median",
            "≤ +15 ms median",
            extra <= TARGET_OVERHEAD,
        )  # fmt: skip
    ]


def _timed_task(server: Server, module_id: int) -> float:
    start = time.perf_counter()
    server.wait(server.submit(module_id))
    return time.perf_counter() - start


@dataclass(frozen=True)
class _Capacity:
    """What one run of sleeping tasks cost the coordinator, by part, per task."""

    count: int
    seconds: float  # from the first submission to the last `done`
    cpu: dict[str, float]  # CPU seconds per task: the API server, PostgreSQL, Redis
    requests: dict[str, float]  # requests the API answered per task, by route
    transactions: float  # PostgreSQL transactions committed per task (every client's)

    @property
    def total(self) -> float:
        return sum(self.cpu.values())

    def slots(self, task_seconds: float) -> float:
        """Worker slots one coordinator core keeps busy with tasks of ``task_seconds``."""
        return task_seconds / self.total


def _capacity(ctx: Context, scratch: Path, postgres: object, broker: object) -> list[Row]:
    workers, concurrency = ctx.count(WORKERS, 2), ctx.count(CONCURRENCY, 2)
    slots, sleep = workers * concurrency, ctx.count(SLEEP, 0.5)
    count = slots * ctx.count(ROUNDS, 2)
    module = ctx.prepare("sleep", scratch / "sleep-module")
    cluster = Cluster(ctx, scratch / "capacity", postgres, broker)
    try:
        cluster.add_workers(workers, concurrency)
        module_id = cluster.server.register(module)
        ctx.log(
            f"celery capacity: {count} tasks of {sleep:g} s on {workers} workers × {concurrency}"
        )
        _sleeping(cluster, module_id, slots, 0.1, postgres, broker)  # every worker builds the env
        run = _sleeping(cluster, module_id, count, sleep, postgres, broker)
    finally:
        cluster.close()
    busy = run.count * sleep / (run.seconds * slots)
    ctx.report.note(
        NAME,
        f"Capacity run: {run.count} tasks of {sleep:g} s in {run.seconds:.1f} s, "
        f"{run.count / run.seconds:.1f} tasks/s, the {slots} slots {busy:.0%} busy sleeping "
        "(the rest: each task's start in its sandbox, on the same 2 cores).",
    )
    answered = ", ".join(f"{route} {number:.2f}" for route, number in run.requests.items())
    ctx.report.note(
        NAME,
        f"Per task of the capacity run: {sum(run.requests.values()):.2f} requests answered by "
        f"the API ({answered}); {run.transactions:.1f} PostgreSQL transactions (every "
        "client's: the server's, the workers' claims, ends and heartbeats).",
    )
    parts = ", ".join(f"{name} {1000 * cpu:.2f}" for name, cpu in run.cpu.items())
    return [
        Row(
            NUMBER, f"celery coordinator CPU per task: {count} tasks of {sleep:g} s, "
            f"{workers} workers × {concurrency}",
            f"{1000 * run.total:.2f} ms ({parts})", target=f"≤ {1000 * TARGET_CPU:g} ms",
            met=run.total <= TARGET_CPU,
        ),
        Row(
            NUMBER, "celery: worker slots one coordinator core keeps busy (from CPU per task)",
            f"{run.slots(10):,.0f} with 10 s tasks, {run.slots(60):,.0f} with 60 s tasks",
        ),
    ]  # fmt: skip


def _sleeping(
    cluster: Cluster, module_id: int, count: int, sleep: float, postgres: object, broker: object
) -> _Capacity:
    """``count`` tasks of ``sleep`` seconds submitted at once, awaited; the coordinator's CPU."""
    server = cluster.server
    pids = {
        "API": server.pid,
        "PostgreSQL": postgres.process.pid,  # type: ignore[attr-defined]
        "Redis": broker.process.pid,  # type: ignore[attr-defined]
    }
    routes, commits = _routes_answered(server.port), _commits(postgres)
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    ids = [server.submit(module_id, {"seconds": f"{sleep:g}"}) for _ in range(count)]
    for task_id in ids:
        server.wait(task_id, timeout=3600)
    seconds = time.perf_counter() - start
    cpu = {name: (tree_cpu(pid) - before[name]) / count for name, pid in pids.items()}
    routes = _routes_answered(server.port) - routes
    requests = {route: number / count for route, number in routes.most_common()}
    return _Capacity(count, seconds, cpu, requests, (_commits(postgres) - commits) / count)


def _routes_answered(port: int) -> Counter[str]:
    """Requests the server has answered so far, by method and route (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as answer:
        text = answer.read().decode()
    found: Counter[str] = Counter()
    for labels, number in _ANSWERED.findall(text):
        fields = dict(_LABEL.findall(labels))
        found[f"{fields.get('method')} {fields.get('endpoint')}"] += int(float(number))
    return found


def _commits(postgres: object) -> int:
    """Transactions PostgreSQL has committed so far, in every database."""
    import psycopg

    url = postgres.url().replace("postgresql+psycopg://", "postgresql://")  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as connection:
        found = connection.execute("SELECT sum(xact_commit) FROM pg_stat_database").fetchone()
    return int(found[0]) if found else 0


def _floor_note(ctx: Context, scratch: Path, postgres: object, broker: object) -> str:
    count = ctx.count(FLOOR_COUNT, 100)
    url, pid = broker.url(), broker.process.pid  # type: ignore[attr-defined]
    message = celery_floor(url, pid, scratch / "floor", count)
    writes = database_floor(postgres.new_database(), count)  # type: ignore[attr-defined]
    upload = upload_floor(count)
    total = message.total + writes.total + upload.total
    return (
        "Floors of what the Celery path adds to a task, in CPU per task, each measured alone "
        f"here: a Celery message {message.text()}; the two writes on PostgreSQL "
        f"{writes.text()}; one output upload {upload.text()}. Together {1000 * total:.2f} ms, "
        "before any work of Orchestra's own (the insert, the submission and the waiting "
        "client's requests, the reads)."
    )


def _flood(ctx: Context, scratch: Path, module: Path, postgres: object, broker: object) -> Row:
    count = ctx.count(10_000, 50)
    cluster = Cluster(ctx, scratch / "flood", postgres, broker)
    try:
        cluster.add_workers(4)
        module_id = cluster.server.register(module)
        start = time.perf_counter()
        ids = [cluster.server.submit(module_id) for _ in range(count)]
        submitted = time.perf_counter() - start
        ctx.log(f"celery flood: {count} submitted in {submitted:.1f} s; waiting")
        statuses = Counter(cluster.server.client.get(f"/task/{t}?wait=60")["status"] for t in ids)
        while statuses.get("queued", 0) + statuses.get("running", 0):
            statuses = Counter(cluster.server.client.get(f"/task/{t}")["status"] for t in ids)
            time.sleep(1)
        total = time.perf_counter() - start
        rss = cluster.server.rss_bytes()
        runs = cluster.runs_per_task()
    finally:
        cluster.close()
    twice = sum(1 for task_id in ids if runs[task_id] > 1)
    lost = sum(1 for task_id in ids if runs[task_id] == 0)
    ok = statuses == Counter({"done": count}) and not twice and not lost
    text = (
        f"{statuses.get('done', 0)}/{count} done, {lost} lost, {twice} twice; submitted at "
        f"{count / submitted:.0f}/s, all done in {total:.0f} s; server RSS "
        f"{fmt_value(rss / 2**20, ' MiB')}"
    )
    return Row(NUMBER, f"celery: {count} tasks submitted at once, 4 workers", text,
               target="all done, none lost, none twice", met=ok)  # fmt: skip
