"""5. Throughput: many no-op tasks submitted at once, two at a time, against two bare streams."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bench_overhead import bare_command
from context import Context
from harness import Row, Stats, alternate, fmt_stats, paired_ratios
from live import Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "throughput"
NUMBER = "5"
TARGET = 0.8  # fraction of the ceiling Orchestra should reach
STREAMS = 2
METHOD = (
    f"A server with ORCHESTRA_MAX_RUNNING={STREAMS}; N no-op tasks submitted back to back "
    "over one kept-alive connection, then each awaited with GET /task/<id>?wait; tasks per "
    "second from the first submission to the last `done`. Ceiling: the same N bare commands "
    f"(`env/bin/python -m Noop OUT`) run by {STREAMS} threads, each in a loop."
)


def run_bench(ctx: Context) -> list[Row]:
    """Orchestra's tasks/second against the ceiling of bare commands, interleaved."""
    count = ctx.count(500, 20)
    reps = ctx.reps(3, 1)
    scratch = ctx.folder("throughput")
    env = orchestra_env(scratch / "home", ctx.uv_cache, max_running=str(STREAMS))
    with Server(env, scratch / "server.log") as server:
        module = ctx.prepare("noop", scratch / "module")
        module_id = server.register(module)
        bare = bare_command(server.home, module, scratch / "bare-out")
        ctx.log(f"throughput: {reps} rep(s) of {count} tasks through Orchestra / bare ceiling")
        ours, ceiling = alternate(
            reps,
            [lambda: _orchestra_rate(server, module_id, count), lambda: _ceiling(bare, count)],
            ctx.log,
            unit="tasks/s",
        )
    ratio = paired_ratios(ours, ceiling)
    return [
        Row(
            NUMBER,
            f"throughput, {count} no-op tasks, {STREAMS} at a time (tasks/s)",
            fmt_stats(Stats(tuple(ours)), "tasks/s"),
            fmt_stats(Stats(tuple(ceiling)), "tasks/s") + " (ceiling)",
            f"{ratio.median:.0%} of the ceiling",
            f"≥ {TARGET:.0%} of the ceiling",
            ratio.median >= TARGET,
        )
    ]


def _orchestra_rate(server: Server, module_id: int, count: int) -> float:
    start = time.perf_counter()
    task_ids = [server.submit(module_id) for _ in range(count)]
    for task_id in task_ids:
        server.wait(task_id, timeout=600)
    return count / (time.perf_counter() - start)


def _ceiling(bare: Callable[[], float], count: int) -> float:
    share = [count // STREAMS + (1 if i < count % STREAMS else 0) for i in range(STREAMS)]
    threads = [threading.Thread(target=_loop, args=(bare, n)) for n in share]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - start)


def _loop(bare: Callable[[], float], times: int) -> None:
    for _ in range(times):
        bare()
