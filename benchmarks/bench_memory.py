"""7. Server memory while many tasks run through it."""

from __future__ import annotations

import logging
import time

from context import Context
from harness import Row, fmt_value
from live import Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "memory"
NUMBER = "7"
TARGET_BYTES = 100 * 1024 * 1024  # the server's RSS must stay below this
GROWTH = 0.10  # RSS may grow at most this fraction between the first and last sample
BATCH = 500  # tasks in flight at once, so the queue stays realistic
METHOD = (
    "A server (default settings) running no-op tasks submitted in batches of "
    f"{BATCH}, each batch awaited; VmRSS of the server process (/proc/<pid>/status) sampled "
    "after start-up and after each checkpoint of finished tasks. 'Not growing' means the "
    f"last sample is within {GROWTH:.0%} of the first checkpoint's."
)


def run_bench(ctx: Context) -> list[Row]:
    """Run tasks up to each checkpoint and sample the server's RSS."""
    checkpoints = [1_000, 5_000, 10_000] if not ctx.quick else [20, 50, 100]
    scratch = ctx.folder("memory")
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    with Server(env, scratch / "server.log") as server:
        module_id = server.register(ctx.prepare("noop", scratch / "module"))
        idle = server.rss_bytes()
        samples: list[int] = []
        done = 0
        start = time.perf_counter()
        for checkpoint in checkpoints:
            done = _run_until(server, module_id, done, checkpoint)
            samples.append(server.rss_bytes())
            ctx.log(f"memory: {done} tasks done, RSS {fmt_value(samples[-1], 'B')}")
        elapsed = time.perf_counter() - start
    ctx.report.note(
        NAME,
        f"RSS idle after registration: {fmt_value(idle, 'B')}; {done} tasks ran in "
        f"{elapsed:.0f} s ({done / elapsed:.1f} tasks/s).",
    )
    growth = samples[-1] / samples[0] - 1
    shown = " / ".join(
        f"{c}: {fmt_value(s, 'B')}" for c, s in zip(checkpoints, samples, strict=True)
    )
    return [
        Row(
            NUMBER,
            "server RSS after N tasks",
            shown,
            ratio=f"{growth:+.1%} from first to last sample",
            target=f"< {fmt_value(TARGET_BYTES, 'B')}, growth ≤ {GROWTH:.0%}",
            met=max(samples) < TARGET_BYTES and growth <= GROWTH,
        )
    ]


def _run_until(server: Server, module_id: int, done: int, goal: int) -> int:
    while done < goal:
        batch = [server.submit(module_id) for _ in range(min(BATCH, goal - done))]
        for task_id in batch:
            server.wait(task_id, timeout=600)
        done += len(batch)
    return done
