"""14. A real model's task: pandas and scikit-learn, a pickled forest, against the bare command."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bench_overhead import bare_command
from context import Context
from harness import (
    Row,
    Stats,
    alternate,
    fmt_stats,
    fmt_value,
    paired_ratios,
    prepare_module,
    run,
    user_env,
)
from live import Server, one_worker, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "warm"
NUMBER = "14"
TARGET_WARM = 0.1  # a later task's request to done, at most this share of the bare command's
METHOD = (
    "`benchmarks/modules/forest_model`: pandas 2.2 and scikit-learn 1.5, a random forest "
    "(50 trees) trained and pickled into `install.files` at benchmark time (its `make_model.py`, "
    "run with `uv run` on the shared installer cache), 1,440 minute rows predicted and written "
    "as CSV. Registered on `python -m orchestra serve` with the sandbox on, after the "
    "background compile. The first task: request to `done` (waiting client). Later tasks: "
    "request to `done` once they start warm (the default; the first task of the generation "
    "runs cold and records its imports, a spare interpreter is started after it, and another "
    "after each task that takes one), alternated with the bare command (`env/bin/python -m "
    "Forest OUT --start … --stop …` from the installed code folder), which gives the next "
    "spare the second it needs to import. First tasks: copies of the module under other "
    "names, each registered and run once on that server and on a second one with "
    "`ORCHESTRA_WARM=0`. On a worker: a real PostgreSQL and Redis, `orchestra serve` with "
    "ORCHESTRA_EXECUTOR=celery and one `orchestra worker` (concurrency 1, its own data "
    "folder, warm starts on), the module registered there and run until a task starts warm, "
    "then warm tasks alternated with the same bare command."
)


def run_bench(ctx: Context) -> list[Row]:
    """First tasks cold (warm starts on and off), then warm tasks against the bare command."""
    reps, firsts = ctx.reps(15, 2), ctx.reps(6, 1)
    scratch = ctx.folder(NAME)
    # a smoke run checks the rows with the no-op module: the forest needs scikit-learn's
    # download, which a --quick run (a fresh installer cache) must not wait for
    module = (
        ctx.prepare("noop", scratch / "module")
        if ctx.quick
        else _forest_module(ctx, scratch / "module")
    )
    cold_env = orchestra_env(scratch / "home-cold", ctx.uv_cache, warm="0")
    warm_env = orchestra_env(scratch / "home", ctx.uv_cache, warm="1")
    with (
        Server(cold_env, scratch / "server-cold.log") as cold,
        Server(warm_env, scratch / "server.log") as server,
    ):
        today: list[float] = []
        learning: list[tuple[float, int]] = []
        for index in range(firsts):  # alternated, each side first in turn
            copy = _copy(module, scratch / f"copy-{index}", index)
            sides = [lambda c=copy: today.append(_first(cold, c)[0]),
                     lambda c=copy: learning.append(_first(server, c))]  # fmt: skip
            for side in sides if index % 2 == 0 else sides[::-1]:
                side()
        module_id = learning[0][1]
        tries = server.warm_up(module_id)
        bare = bare_command(server.home, module, scratch / "bare-out")
        task = lambda: _request_to_done(server, module_id)  # noqa: E731
        ctx.log(f"{NAME}: {reps} rep(s) of a warm task through the server / the bare command")
        tasks, bares = alternate(reps, [task, bare], ctx.log if ctx.quick else None)
    on_worker, worker_bares, worker_tries = _on_worker(ctx, module, bare, reps)
    ctx.report.note(
        NAME,
        f"the first warm task was task {tries + 1} on the server (the first one learns), "
        f"task {worker_tries} on the worker.",
    )
    name = json.loads((module / "metadata.json").read_text())["name"]
    rows = [
        _first_row([f for f, _ in learning], today),
        _later_row("later task started warm, request to done", tasks, bares),
        _later_row(
            "later task started warm on a Celery worker (1 worker, PostgreSQL and Redis), "
            "request to done", on_worker, worker_bares,
        ),
    ]  # fmt: skip
    for row in rows:
        row.measurement = f"{name}: {row.measurement}"
    return rows


def _on_worker(
    ctx: Context, module: Path, bare: Callable[[], float], reps: int
) -> tuple[list[float], list[float], int]:
    """Warm tasks through one Celery worker against the bare command; tries to the first."""
    with one_worker(ctx, NAME) as server:
        module_id = server.register(module)
        tries = server.warm_up(module_id)  # the worker builds its environment first
        task = lambda: _request_to_done(server, module_id)  # noqa: E731
        ctx.log(f"{NAME}: {reps} rep(s) of a warm task through a worker / the bare command")
        tasks, bares = alternate(reps, [task, bare], ctx.log if ctx.quick else None)
    return tasks, bares, tries


def _copy(module: Path, dest: Path, index: int) -> Path:
    """The module (its forest included) under another name, for one more first task."""
    shutil.copytree(module, dest)
    path = dest / "metadata.json"
    meta = json.loads(path.read_text())
    meta["name"] += f"-{index}"
    path.write_text(json.dumps(meta))
    return dest


def _first(server: Server, module: Path) -> tuple[float, int]:
    """The first task of a new registration, request to done; and the module's id."""
    module_id = server.register(module)
    start = time.perf_counter()
    server.wait(server.submit(module_id))
    return time.perf_counter() - start, module_id


def _forest_module(ctx: Context, dest: Path) -> Path:
    """The module copied to ``dest``, its forest trained and pickled into it."""
    module = prepare_module("forest_model", dest)
    requirements = (module / "requirements.txt").read_text().split()
    withs = [arg for requirement in requirements for arg in ("--with", requirement)]
    ctx.log(f"{NAME}: training the forest ({', '.join(requirements)})")
    env = user_env(UV_CACHE_DIR=str(ctx.uv_cache))
    argv = [ctx.uv, "run", "--no-project", "--no-config", "--quiet", *withs]
    run([*argv, "python", str(module / "make_model.py")], env=env, cwd=module)
    return module


def _request_to_done(server: Server, module_id: int) -> float:
    start = time.perf_counter()
    server.wait(server.submit(module_id))
    return time.perf_counter() - start


def _first_row(learning: list[float], today: list[float]) -> Row:
    mine, theirs = Stats(tuple(learning)), Stats(tuple(today))
    ratio = mine.median / theirs.median
    return Row(
        NUMBER, "first task of a registration, request to done (cold, learning"
        " its imports), against ORCHESTRA_WARM=0",
        fmt_stats(mine, "s"), fmt_stats(theirs, "s"), f"{ratio:.2f}× median",
        target="no slower than without warm starts (within 10 %)", met=ratio <= 1.1,
    )  # fmt: skip


def _later_row(label: str, tasks: list[float], bares: list[float]) -> Row:
    mine, theirs = Stats(tuple(tasks)), Stats(tuple(bares))
    ratios = paired_ratios(tasks, bares)
    return Row(
        NUMBER, label,
        f"{fmt_stats(mine, 's')}, p95 {fmt_value(mine.p95, 's')}",
        f"{fmt_stats(theirs, 's')} bare command", f"{ratios.median:.2f}× median",
        target=f"≤ {TARGET_WARM:g}× the bare command", met=ratios.median <= TARGET_WARM,
    )  # fmt: skip
