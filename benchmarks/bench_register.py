"""1. Registering a module that needs numpy and pandas, timed as the user runs it."""

from __future__ import annotations

import logging
from pathlib import Path

from classic import build_venv
from context import Context
from harness import (
    BASE_PYTHON,
    Row,
    Stats,
    alternate,
    fmt_stats,
    paired_ratios,
    run,
    timed,
    user_env,
)
from live import cli, orchestra_env, wait_background_compile

_LOGGER = logging.getLogger(__name__)

NAME = "register"
NUMBER = "1"
TARGET = 25.0  # Orchestra at least this many times faster, median of paired ratios
METHOD = (
    "Whole process `python -m orchestra --register DIR` (fresh ORCHESTRA_HOME per repetition, "
    "one installer cache shared through ORCHESTRA_UV_CACHE) against `python -m venv X && "
    "X/bin/pip install -r requirements.txt` with the machine's pip configuration as a user has "
    "it (extra local indexes, a constraints file). Warm: both caches filled by an untimed run "
    "first. Cold: a new uv cache per repetition against pip `--no-cache-dir` (pip still reads "
    "the machine's local file:// indexes, uv downloads from PyPI). Floor: `uv venv` + "
    "`uv pip install` alone with the warm cache."
)


def run_bench(ctx: Context) -> list[Row]:
    """Warm, cold and floor registrations; one row each."""
    module = ctx.prepare("pandas_model", ctx.folder("register") / "module")
    requirements = module / "requirements.txt"
    ctx.warm_uv_cache()
    if not ctx.quick:
        ctx.log("warming pip's cache (untimed classic build)")
        ctx.pool.take(1)
    return [*_warm(ctx, module, requirements), _cold(ctx, module, requirements)]


def _orchestra_side(ctx: Context, module: Path, uv_cache: Path | None = None) -> float:
    scratch = ctx.folder("orchestra-register")
    cache = uv_cache or ctx.uv_cache
    env = orchestra_env(scratch / "home", cache)
    seconds = timed(lambda: cli("--register", str(module), env=env))
    # the compile it leaves running would slow whichever side comes next
    wait_background_compile(scratch / "home")
    return seconds


def _classic_side(ctx: Context, requirements: Path, *, no_cache: bool = False) -> float:
    venv = ctx.pool.new_path()
    seconds = build_venv(venv, requirements, no_cache=no_cache)
    ctx.pool.adopt(venv)
    return seconds


def _floor_side(ctx: Context, requirements: Path) -> float:
    venv = ctx.folder("uv-floor") / "env"
    env = user_env(UV_CACHE_DIR=str(ctx.uv_cache))

    def work() -> None:
        run([ctx.uv, "venv", "--quiet", "--python", BASE_PYTHON, str(venv)], env=env)
        python = str(venv / "bin" / "python")
        run(
            [ctx.uv, "pip", "install", "--quiet", "--python", python, "-r", str(requirements)],
            env=env,
        )

    return timed(work)


def _warm(ctx: Context, module: Path, requirements: Path) -> list[Row]:
    reps = ctx.reps(5, 1)
    ctx.log(f"register, warm caches: {reps} rep(s) of Orchestra / pip / uv floor")
    orch, classic, floor = alternate(
        reps,
        [
            lambda: _orchestra_side(ctx, module),
            lambda: _classic_side(ctx, requirements),
            lambda: _floor_side(ctx, requirements),
        ],
        ctx.log,
    )
    speedup = paired_ratios(classic, orch)
    over_floor = paired_ratios(orch, floor)
    return [
        Row(
            NUMBER,
            f"register a {ctx.heavy} module, warm caches",
            fmt_stats(Stats(tuple(orch)), "s"),
            fmt_stats(Stats(tuple(classic)), "s"),
            f"{speedup.median:.1f}× faster",
            f"≥{TARGET:g}× faster",
            speedup.median >= TARGET,
        ),
        Row(
            NUMBER,
            "floor: `uv venv` + `uv pip install` alone, warm cache (in the Orchestra column)",
            fmt_stats(Stats(tuple(floor)), "s"),
            ratio=f"Orchestra takes {over_floor.median:.2f}× the floor",
        ),
    ]


def _cold(ctx: Context, module: Path, requirements: Path) -> Row:
    label = f"register a {ctx.heavy} module, cold caches"
    if ctx.quick:
        return Row(NUMBER, label, "skipped (--quick)", "skipped (--quick)")
    reps = ctx.reps(2, 1) if not ctx.reps_override else max(1, ctx.reps_override // 2)
    ctx.log(f"register, cold caches: {reps} rep(s) of Orchestra / pip --no-cache-dir")
    orch, classic = alternate(
        reps,
        [
            lambda: _orchestra_side(ctx, module, ctx.folder("cold-uv-cache")),
            lambda: _classic_side(ctx, requirements, no_cache=True),
        ],
        ctx.log,
    )
    speedup = paired_ratios(classic, orch)
    return Row(
        NUMBER,
        label,
        fmt_stats(Stats(tuple(orch)), "s"),
        fmt_stats(Stats(tuple(classic)), "s"),
        f"{speedup.median:.1f}× faster",
    )
