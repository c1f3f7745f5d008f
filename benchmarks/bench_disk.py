"""2. Disk used by N modules with the same requirements: Orchestra against classic venvs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from context import Context
from harness import Row, disk_usage, fmt_value
from live import cli, orchestra_env, wait_background_compile

_LOGGER = logging.getLogger(__name__)

NAME = "disk"
NUMBER = "2"
TARGET = 0.1  # Orchestra's data folder at most this fraction of the classic venvs
METHOD = (
    "N copies of the numpy+pandas module (distinct names) registered into one data folder "
    "with the shared installer cache outside it; measured once the background bytecode "
    "compile has finished. Sizes are allocated blocks like `du`, each inode counted once, so "
    "files hard-linked from the cache count once inside the data folder. Classic: N venvs "
    "built with pip (pip's cache not counted). The uv cache is reported separately."
)


def run_bench(ctx: Context) -> list[Row]:
    """Register N modules, build N classic venvs, compare their disk use."""
    count = ctx.count(10, 1)
    ctx.warm_uv_cache()
    home = _register_copies(ctx, count)
    classic_venvs = ctx.pool.take(count)
    ours = disk_usage([home])
    cache = disk_usage([ctx.uv_cache])
    both = disk_usage([home, ctx.uv_cache])
    classic = disk_usage(classic_venvs)
    pyc = _pyc_bytes(home)
    ctx.report.note(
        NAME,
        f"the .pyc files in Orchestra's data folder take {fmt_value(pyc, 'B')} "
        f"({fmt_value(pyc / count, 'B')} per module; each inode counted once); "
        f"data folder + cache together: {fmt_value(both, 'B')}.",
    )
    ratio = ours / classic
    return [
        Row(
            NUMBER,
            f"disk for {count} {ctx.heavy} module(s), cache excluded",
            fmt_value(ours, "B"),
            fmt_value(classic, "B"),
            f"{ratio:.3f} of classic",
            f"≤ {TARGET:g} of classic",
            ratio <= TARGET,
        ),
        Row(
            NUMBER,
            "shared uv cache (in the Orchestra column), and data folder + cache",
            f"{fmt_value(cache, 'B')}; together {fmt_value(both, 'B')}",
            fmt_value(classic, "B"),
            f"{both / classic:.3f} of classic",
        ),
    ]


def _register_copies(ctx: Context, count: int) -> Path:
    scratch = ctx.folder("disk")
    home = scratch / "home"
    env = orchestra_env(home, ctx.uv_cache)
    ctx.log(f"disk: registering {count} module(s) into one data folder")
    for index in range(count):
        module = ctx.prepare("pandas_model", scratch / f"module-{index}", suffix=f"-{index}")
        cli("--register", str(module), env=env)
        waited = wait_background_compile(home)
        ctx.log(f"disk: module {index + 1}: background compile ended {waited:.1f} s later")
    return home


def _pyc_bytes(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".pyc"):
                info = os.lstat(os.path.join(folder, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total
