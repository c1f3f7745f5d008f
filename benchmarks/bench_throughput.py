"""5. Throughput: many no-op tasks submitted at once, two at a time, against two bare streams."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_overhead import bare_command
from context import Context
from floors import request_floor
from harness import Row, Stats, alternate, fmt_stats, machine_busy, paired_ratios, process_cpu
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
    f"(`env/bin/python -m Noop OUT`) run by {STREAMS} threads, each in a loop. "
    "CPU per task: busy time of the whole machine (/proc/stat, steal excluded) and of the "
    "server, the launcher and this client process (/proc/<pid>/stat) over each run, divided "
    "by the number of tasks. Floor of a request: a Flask app answering a constant JSON, "
    "served by waitress with the same 16 threads (benchmarks/flask_floor.py), its CPU per "
    "GET over a kept-alive connection."
)
FLOOR_REQUESTS = 1000


@dataclass
class _Usage:
    """CPU seconds per task of each run, by where they were spent."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, part: str, seconds: float, count: int) -> None:
        self.runs.setdefault(part, []).append(seconds / count)

    def ms(self, part: str) -> float:
        return 1000 * statistics.median(self.runs.get(part) or [0.0])


class _Meter:
    """Busy CPU of the machine and of chosen processes between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        figures = {"machine": machine_busy(), "client": time.process_time()}
        figures.update({name: process_cpu(pid) for name, pid in self.pids.items()})
        return figures

    def stop(self, usage: _Usage, count: int) -> None:
        end = self._read()
        for name, value in end.items():
            usage.add(name, value - self.start[name], count)


def _launcher_pid(server_pid: int) -> int:
    """The server's child that forks the supervisors (0 when there is none)."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"launcher.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return 0


def run_bench(ctx: Context) -> list[Row]:
    """Orchestra's tasks/second against the ceiling of bare commands, interleaved."""
    count = ctx.count(500, 20)
    reps = ctx.reps(3, 1)
    scratch = ctx.folder("throughput")
    env = orchestra_env(scratch / "home", ctx.uv_cache, max_running=str(STREAMS), warm="0")
    warm_env = orchestra_env(scratch / "home-warm", ctx.uv_cache, max_running=str(STREAMS),
                             warm="1")  # fmt: skip
    with (
        Server(env, scratch / "server.log") as server,
        Server(warm_env, scratch / "server-warm.log") as warm,
    ):
        module = ctx.prepare("noop", scratch / "module")
        module_id, warm_id = server.register(module), warm.register(module)
        warm.warm_up(warm_id)
        bare = bare_command(server.home, module, scratch / "bare-out")
        pids = {"server": server.pid, "launcher": _launcher_pid(server.pid)}
        used, bare_used, warm_used = _Usage(), _Usage(), _Usage()
        warm_pids = {"server": warm.pid, "launcher": _launcher_pid(warm.pid)}
        ctx.log(f"throughput: {reps} rep(s) of {count} tasks through Orchestra (cold, warm)"
                " / bare ceiling")  # fmt: skip
        ours, ceiling, warmed = alternate(
            reps,
            [
                lambda: _orchestra_rate(server, module_id, count, _Meter(pids), used),
                lambda: _ceiling(bare, count, _Meter({}), bare_used),
                lambda: _orchestra_rate(warm, warm_id, count, _Meter(warm_pids), warm_used),
            ],
            ctx.log,
            unit="tasks/s",
        )
    ctx.report.note(NAME, _cpu_note(used, bare_used))
    ctx.report.note(NAME, "with warm starts: " + _cpu_note(warm_used, bare_used))
    ctx.report.note(NAME, _floor_note(request_floor(ctx.count(FLOOR_REQUESTS, 50))))
    return [
        _row(f"throughput, cold (ORCHESTRA_WARM=0), {count} no-op tasks, {STREAMS} at a time"
             " (tasks/s)", ours, ceiling),
        _row(f"throughput with warm starts (the default), {count} no-op tasks, {STREAMS} at"
             " a time (tasks/s)", warmed, ceiling),
    ]  # fmt: skip


def _row(label: str, ours: list[float], ceiling: list[float]) -> Row:
    ratio = paired_ratios(ours, ceiling)
    return Row(
        NUMBER,
        label,
        fmt_stats(Stats(tuple(ours)), "tasks/s"),
        fmt_stats(Stats(tuple(ceiling)), "tasks/s") + " (ceiling)",
        f"{ratio.median:.0%} of the ceiling",
        f"≥ {TARGET:.0%} of the ceiling",
        ratio.median >= TARGET,
    )


def _orchestra_rate(
    server: Server, module_id: int, count: int, meter: _Meter, usage: _Usage
) -> float:
    start = time.perf_counter()
    task_ids = [server.submit(module_id) for _ in range(count)]
    for task_id in task_ids:
        server.wait(task_id, timeout=600)
    seconds = time.perf_counter() - start
    meter.stop(usage, count)
    return count / seconds


def _ceiling(bare: Callable[[], float], count: int, meter: _Meter, usage: _Usage) -> float:
    share = [count // STREAMS + (1 if i < count % STREAMS else 0) for i in range(STREAMS)]
    threads = [threading.Thread(target=_loop, args=(bare, n)) for n in share]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    meter.stop(usage, count)
    return count / seconds


def _cpu_note(used: _Usage, bare: _Usage) -> str:
    """Where the machine's CPU went per task, and what 80% of the ceiling would allow."""
    ours, theirs = used.ms("machine"), bare.ms("machine")
    server, launcher, client = used.ms("server"), used.ms("launcher"), used.ms("client")
    rest = ours - server - launcher - client  # the supervisors and the modules
    modules = theirs - bare.ms("client")  # the same command, started the same way
    budget = theirs / TARGET - theirs
    return (
        f"CPU per task (medians): Orchestra {ours:.1f} ms of machine time against "
        f"{theirs:.1f} ms for the bare command, {ours - theirs:+.1f} ms. Of Orchestra's: server "
        f"{server:.1f} ms, launcher {launcher:.1f} ms, client {client:.1f} ms, supervisors "
        f"and modules {rest:.1f} ms (the bare modules and their start: {modules:.1f} ms). "
        f"With both cores kept busy, {TARGET:.0%} of the ceiling allows {budget:.1f} ms per task "
        "on top of the bare command."
    )


def _loop(bare: Callable[[], float], times: int) -> None:
    for _ in range(times):
        bare()


def _floor_note(seconds: float) -> str:
    return (
        f"Floor of a request on this machine: a Flask app answering a constant JSON on waitress "
        f"spends {1000 * seconds:.2f} ms of CPU per GET, so the two requests of a task (submit "
        f"and wait) cost at least {2000 * seconds:.2f} ms of the budget before any work."
    )
