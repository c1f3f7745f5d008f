"""12. A thousand clients waiting on running tasks: everyone else still answered at once."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

from context import Context
from harness import BenchError, Row, Stats, fmt_delta, fmt_stats, timed
from live import Client, Server, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "waiting"
NUMBER = "12"
TARGET_EXTRA = 0.005  # seconds waiters may add to another request's median
TARGET_TOLD = 0.100  # seconds from a task's end to its last waiter's answer, at most
METHOD = (
    "A real server (local executor, ORCHESTRA_MAX_RUNNING as many as the tasks) runs T tasks "
    "of benchmarks/modules/sleep whose ends are spread over a few seconds. Latency of "
    "GET /health and GET /task/<id> (a running task) over a kept-alive connection, N times "
    "each, first with no waiters, then while W clients (one asyncio connection each, W/T per "
    "task) wait with GET /task/<id>?wait=60. Told: each waiter's answer time (wall clock) "
    "minus the task's `finished` time in its record; every waiter must get `done`."
)


def run_bench(ctx: Context) -> list[Row]:
    """Latencies with and without waiters, and how soon waiters learn of the end."""
    tasks, waiters, reps = ctx.count(50, 4), ctx.count(1000, 40), ctx.count(300, 20)
    scratch = ctx.folder("waiting")
    env = orchestra_env(scratch / "home", ctx.uv_cache, max_running=str(tasks + 1))
    with Server(env, scratch / "server.log") as server:
        module_id = server.register(ctx.prepare("sleep", scratch / "module"))
        probe = server.submit(module_id, {"seconds": "600"})
        alone = _latencies(server.client, probe, reps)
        first_end = 8.0 + reps * 0.01 + waiters * 0.004  # after every waiter is in place
        ids = [
            server.submit(module_id, {"seconds": f"{first_end + i * 0.1:.2f}"})
            for i in range(tasks)
        ]
        crowd = _Crowd(server.port, [ids[i % tasks] for i in range(waiters)])
        crowd.start()
        crowd.connected.wait(120)
        time.sleep(1.0)  # the last requests parked
        crowded = _latencies(server.client, probe, reps)
        if any(server.client.get(f"/task/{t}")["status"] != "running" for t in ids):
            raise BenchError("a task ended before the latencies with waiters were measured")
        answers = crowd.finish(timeout=first_end + 120)
        finished = {t: _stamp(server.client.get(f"/task/{t}")["finished"]) for t in ids}
        # a task outlives its server by design: the probe would sleep on for ten minutes
        server.client.post(f"/task/{probe}/kill")
    return _rows(ctx, alone, crowded, answers, finished, waiters)


def _latencies(client: Client, task_id: int, reps: int) -> dict[str, Stats]:
    health, task = [], []
    for _ in range(reps):
        health.append(timed(lambda: client.get("/health")))
        task.append(timed(lambda: client.get(f"/task/{task_id}")))
    return {"GET /health": Stats(tuple(health)), "GET /task/<id>": Stats(tuple(task))}


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _rows(
    ctx: Context,
    alone: dict[str, Stats],
    crowded: dict[str, Stats],
    answers: list[tuple[int, str, float]],
    finished: dict[int, float],
    waiters: int,
) -> list[Row]:
    rows = []
    for what in alone:
        extra = crowded[what].median - alone[what].median
        rows.append(Row(
            NUMBER, f"{what} with {waiters} clients waiting (against none)",
            fmt_stats(crowded[what], "s"), fmt_stats(alone[what], "s"), fmt_delta(extra),
            target=f"≤ {fmt_delta(TARGET_EXTRA)} median", met=extra <= TARGET_EXTRA,
        ))  # fmt: skip
    done = sum(1 for _, status, _ in answers if status == "done")
    told = Stats(tuple(max(0.0, at - finished[task]) for task, _, at in answers))
    slowest = max(told.values)
    ctx.report.note(
        NAME,
        f"{done} of {waiters} waiters answered `done`; told p95 {told.p95 * 1000:.0f} ms, "
        f"slowest {slowest * 1000:.0f} ms.",
    )
    rows.append(Row(
        NUMBER, f"{waiters} waiters: from a task's end to its waiters' answer",
        fmt_stats(told, "s"), ratio=f"max {slowest * 1000:.0f} ms, {done} done",
        target=f"all done, each ≤ {TARGET_TOLD * 1000:.0f} ms",
        met=done == waiters and slowest <= TARGET_TOLD,
    ))  # fmt: skip
    return rows


class _Crowd:
    """Many clients, one connection each, waiting in an event loop of their own thread."""

    def __init__(self, port: int, task_ids: list[int]) -> None:
        self.port, self.task_ids = port, task_ids
        self.connected = threading.Event()
        self._answers: list[tuple[int, str, float]] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> list[tuple[int, str, float]]:
        """(task, status, wall-clock time of the answer) for every waiter."""
        self._thread.join(timeout)
        if self._thread.is_alive() or len(self._answers) != len(self.task_ids):
            raise BenchError(f"{len(self._answers)} of {len(self.task_ids)} waiters answered")
        return self._answers

    async def _all(self) -> None:
        streams = [await asyncio.open_connection("127.0.0.1", self.port) for _ in self.task_ids]
        for (_, writer), task_id in zip(streams, self.task_ids, strict=True):
            writer.write(f"GET /task/{task_id}?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.gather(*(writer.drain() for _, writer in streams))
        self.connected.set()
        await asyncio.gather(
            *(
                self._answer(reader, t)
                for (reader, _), t in zip(streams, self.task_ids, strict=True)
            )
        )
        for _, writer in streams:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, task_id: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        at = time.time()
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body: dict[str, Any] = json.loads(await reader.readexactly(length))
        self._answers.append((task_id, str(body.get("status")), at))
