"""4. Task overhead: a no-op module through a real server against the bare command."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from context import Context
from harness import (
    Row,
    Stats,
    alternate,
    executable_of,
    fmt_delta,
    fmt_stats,
    fmt_value,
    module_argv,
    run,
    timed,
    user_env,
)
from live import Server, generations, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "overhead"
NUMBER = "4"
TARGET_MEDIAN = 0.010  # seconds Orchestra may add at the median
TARGET_P95 = 0.025  # seconds Orchestra may add at the 95th percentile
TARGET_SANDBOX = 0.005  # seconds the task sandbox may add at the median
WARMUP = 5
BLOCK = 10  # measurements of one side in a row (see harness.alternate)
METHOD = (
    "A module that writes one small file. Orchestra: `python -m orchestra serve` in a "
    "subprocess on a temporary data folder; timed from the client's POST /module/<id>/run to "
    "the client holding the answer `done` (GET /task/<id>?wait=60 on a kept-alive "
    "connection), or with a client polling GET /task/<id> every 50 ms; the same waiting "
    "client against a second server with `ORCHESTRA_SANDBOX=off`, for what the sandbox and "
    "the limits add. Bare command: "
    "`env/bin/python -m Noop OUT` run with subprocess from the module's installed code "
    "folder, with the same environment's interpreter. The four are interleaved in blocks of "
    f"{BLOCK} (each block after one unmeasured run, which pays for what the previous side's "
    f"last task left to the kernel); the first {WARMUP} of each are discarded."
)


def run_bench(ctx: Context) -> list[Row]:
    """Waiting client, polling client, bare command, and the sandbox off, interleaved."""
    reps = ctx.reps(100, 5)
    scratch = ctx.folder("overhead")
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    unconfined = orchestra_env(scratch / "home-off", ctx.uv_cache, sandbox="off")
    with (
        Server(env, scratch / "server.log") as server,
        Server(unconfined, scratch / "server-off.log") as server_off,
    ):
        module = ctx.prepare("noop", scratch / "module")
        module_id, off_id = server.register(module), server_off.register(module)
        direct = bare_command(server.home, module, scratch / "direct-out")
        phases: list[dict[str, float]] = []
        waiting = lambda: _waiting_client(server, module_id, phases)  # noqa: E731
        polling = lambda: timed(lambda: server.poll(server.submit(module_id)))  # noqa: E731
        waiting_off = lambda: timed(lambda: server_off.wait(server_off.submit(off_id)))  # noqa: E731
        sides = [waiting, direct, polling, waiting_off]
        alternate(WARMUP, sides)
        ctx.log(f"overhead: {reps} rep(s) of waiting client / bare command / polling client"
                " / waiting client with the sandbox off")  # fmt: skip
        phases.clear()
        waited, bare, polled, off = alternate(
            reps, sides, ctx.log if ctx.quick else None, block=BLOCK
        )
    ctx.report.note(NAME, "where a waiting client's time goes (medians): " + _phases(phases))
    return [
        _row("task overhead (no-op): waiting client", waited, bare, with_target=True),
        _row("task overhead (no-op): client polling every 50 ms", polled, bare, with_target=False),
        _sandbox_row(waited, off),
    ]


def _sandbox_row(on: list[float], off: list[float]) -> Row:
    """What the sandbox and the limits add to a task, against the same server without them."""
    mine, theirs = Stats(tuple(on)), Stats(tuple(off))
    extra = mine.median - theirs.median
    return Row(
        NUMBER,
        "task overhead (no-op): sandbox on vs ORCHESTRA_SANDBOX=off, waiting clients",
        f"{fmt_stats(mine, 's')}, p95 {fmt_value(mine.p95, 's')}",
        f"{fmt_stats(theirs, 's')}, p95 {fmt_value(theirs.p95, 's')}",
        f"{fmt_delta(extra)} median",
        "≤ +5 ms median",
        extra <= TARGET_SANDBOX,
    )


def _waiting_client(server: Server, module_id: int, phases: list[dict[str, float]]) -> float:
    """One task by the waiting client; notes the server's own times of its phases."""
    sent = time.time()
    start = time.perf_counter()
    task = server.wait(server.submit(module_id))
    seconds = time.perf_counter() - start
    received = sent + seconds
    created, started, finished = (_epoch(task[k]) for k in ("created", "started", "finished"))
    phases.append(
        {
            "request → created": created - sent,
            "created → started": started - created,
            "started → finished": finished - started,
            "finished → client has `done`": received - finished,
        }
    )
    return seconds


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.removesuffix("Z")).replace(tzinfo=UTC).timestamp()


def _phases(phases: list[dict[str, float]]) -> str:
    if not phases:
        return "no data"
    names = list(phases[0])
    medians = {name: statistics.median(p[name] for p in phases) for name in names}
    return "; ".join(f"{name} {fmt_delta(value)}" for name, value in medians.items()) + (
        " (server stamps have millisecond resolution)"
    )


def bare_command(home: Path, module: Path, out_root: Path) -> Callable[[], float]:
    """A callable running the installed ``module`` directly; returns its seconds."""
    generation = generations(home)[-1]
    code = generation / "code"
    python = str(generation / "env" / "bin" / "python")
    argv = [python, "-m", executable_of(module), *module_argv(module)]
    env = user_env()
    serial = iter(range(10**9))

    def once() -> float:
        out = out_root / str(next(serial))
        out.mkdir(parents=True)
        start = time.perf_counter()
        run([*argv[:3], str(out), *argv[3:]], env=env, cwd=code)
        return time.perf_counter() - start

    return once


def _row(label: str, ours: list[float], bare: list[float], *, with_target: bool) -> Row:
    mine, theirs = Stats(tuple(ours)), Stats(tuple(bare))
    extra_median = mine.median - theirs.median
    extra_p95 = mine.p95 - theirs.p95
    met = extra_median <= TARGET_MEDIAN and extra_p95 <= TARGET_P95 if with_target else None
    return Row(
        NUMBER,
        label,
        f"{fmt_stats(mine, 's')}, p95 {fmt_value(mine.p95, 's')}",
        f"{fmt_stats(theirs, 's')}, p95 {fmt_value(theirs.p95, 's')}",
        f"{fmt_delta(extra_median)} median, {fmt_delta(extra_p95)} p95",
        "≤ +10 ms median, ≤ +25 ms p95" if with_target else "",
        met,
    )
