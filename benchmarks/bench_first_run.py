"""3. The first run of a freshly registered module that imports pandas."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from context import Context
from harness import (
    Row,
    Stats,
    alternate,
    executable_of,
    fmt_stats,
    module_argv,
    paired_ratios,
    run,
    timed,
    user_env,
)
from live import Server, orchestra_env, wait_background_compile

_LOGGER = logging.getLogger(__name__)

NAME = "first_run"
NUMBER = "3"
TARGET = 1.2  # Orchestra's first run at most this many times the classic one
COMPILE_SECONDS: list[float] = []  # how long the background compile ran after "installed"
METHOD = (
    "A module that only imports pandas, registered through a real server (POST /modules, "
    "polled until installed); then timed from POST /module/<id>/run to the answer of "
    "GET /task/<id>?wait=… saying done. 'Right after registration': the run starts as soon "
    "as the module shows installed, while the background bytecode compile may still run. "
    "'After compile': another fresh copy, run once that compile has finished. These two "
    "share the suite's installer cache, where earlier registrations may have left compiled "
    "bytecode; 'new installer cache': a server whose cache starts empty (so nothing is "
    "compiled yet), run right after registration. Classic: "
    "`X/bin/python -m ImportPandas OUT` in a pip-built venv where nothing has run yet (pip "
    "compiles bytecode at install). Both sides run with the machine's environment, which "
    "sets PYTHONDONTWRITEBYTECODE=1 as users here have it: no run writes .pyc files, so a "
    "first run without compiled bytecode stays slow."
)


def run_bench(ctx: Context) -> list[Row]:
    """First runs right after registration, after the compile, and in a classic venv."""
    reps = ctx.reps(3, 1)
    ctx.warm_uv_cache()
    scratch = ctx.folder("first-run")
    home = scratch / "home"
    ctx.log(f"first run: {reps} rep(s) of immediate / classic / compiled / new cache")
    with Server(orchestra_env(home, ctx.uv_cache), scratch / "server.log") as server:
        serial = iter(range(10_000))
        immediate, classic, compiled, fresh = alternate(
            reps,
            [
                lambda: _orchestra_first_run(ctx, server, scratch, next(serial), compiled=False),
                lambda: _classic_first_run(ctx, scratch),
                lambda: _orchestra_first_run(ctx, server, scratch, next(serial), compiled=True),
                lambda: _fresh_cache_first_run(ctx),
            ],
            ctx.log,
        )
    ctx.report.note(
        NAME,
        "the background bytecode compile ended "
        f"{fmt_stats(Stats(tuple(COMPILE_SECONDS)), 's')} after the module showed installed.",
    )
    return [
        _row(f"first run importing {ctx.heavy}, right after registration", immediate, classic),
        _row(f"first run importing {ctx.heavy}, after the background compile", compiled, classic),
        _row(f"first run importing {ctx.heavy}, right after, new installer cache", fresh, classic),
    ]


def _row(label: str, ours: list[float], classic: list[float]) -> Row:
    ratio = paired_ratios(ours, classic)
    return Row(
        NUMBER,
        label,
        fmt_stats(Stats(tuple(ours)), "s"),
        fmt_stats(Stats(tuple(classic)), "s"),
        f"{ratio.median:.2f}× classic",
        f"≤ {TARGET:g}× classic",
        ratio.median <= TARGET,
    )


def _orchestra_first_run(
    ctx: Context, server: Server, scratch: Path, serial: int, *, compiled: bool
) -> float:
    module = ctx.prepare("import_pandas", scratch / f"module-{serial}", suffix=f"-{serial}")
    module_id = server.register(module, settle=False)
    if compiled:
        COMPILE_SECONDS.append(wait_background_compile(server.home))
    start = time.perf_counter()
    server.wait(server.submit(module_id))
    seconds = time.perf_counter() - start
    wait_background_compile(server.home)  # let the next measurement start from a quiet machine
    return seconds


def _fresh_cache_first_run(ctx: Context) -> float:
    """Right after registration on a server whose installer cache starts empty."""
    scratch = ctx.folder("first-run-new-cache")
    env = orchestra_env(scratch / "home", scratch / "uv-cache")
    with Server(env, scratch / "server.log") as server:
        return _orchestra_first_run(ctx, server, scratch, 0, compiled=False)


def _classic_first_run(ctx: Context, scratch: Path) -> float:
    venv = ctx.pool.take_unused()
    module = scratch / f"classic-{venv.name}"
    if not module.exists():
        ctx.prepare("import_pandas", module)
    out = module / "out"
    os.makedirs(out, exist_ok=True)
    python = str(venv / "bin" / "python")
    argv = [python, "-m", executable_of(module), str(out), *module_argv(module)]
    env = user_env()
    return timed(lambda: run(argv, env=env, cwd=module))
