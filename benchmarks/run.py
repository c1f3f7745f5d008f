"""Run Orchestra's benchmarks, print the results table and write it to docs/benchmarks.md.

Usage: ``./dev bench [--quick] [--only NAME[,NAME]] [--reps N] [--output FILE]``
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

import bench_access
import bench_api
import bench_celery
import bench_dashboard
import bench_disk
import bench_first_run
import bench_memory
import bench_models
import bench_overhead
import bench_register
import bench_reuse
import bench_throughput
import bench_waiting
import bench_warm
import bench_zip
from context import Context
from harness import ROOT, Report, Row, machine_description, render_table

_LOGGER = logging.getLogger(__name__)

BENCHES: list[ModuleType] = [
    bench_register,
    bench_disk,
    bench_first_run,
    bench_overhead,
    bench_throughput,
    bench_api,
    bench_memory,
    bench_dashboard,
    bench_celery,
    bench_access,
    bench_zip,
    bench_waiting,
    bench_models,
    bench_warm,
    bench_reuse,
]
BY_NAME = {bench.NAME: bench for bench in BENCHES}
DOC = ROOT / "docs" / "benchmarks.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts and reps")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    parser.add_argument("--reps", type=int, help="repetitions per comparison (overrides defaults)")
    parser.add_argument(
        "--output", type=Path, help=f"Markdown file to write (default {DOC}; none with --quick)"
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    args.selected = _select(parser, args.only)
    return args


def _select(parser: argparse.ArgumentParser, only: str | None) -> list[ModuleType]:
    if not only:
        return BENCHES
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BY_NAME)}"
        )
    return [BY_NAME[n] for n in names]


def run_all(ctx: Context, benches: list[ModuleType]) -> bool:
    """Run each benchmark; a failure becomes a row saying so. True when all succeeded."""
    ok = True
    for bench in benches:
        ctx.log(f"== {bench.NUMBER}. {bench.NAME}")
        start = time.perf_counter()
        try:
            ctx.report.rows.extend(bench.run_bench(ctx))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            ok = False
            traceback.print_exc(file=sys.stderr)
            message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            ctx.report.rows.append(Row(bench.NUMBER, f"{bench.NAME}: FAILED: {message}", met=False))
        ctx.report.durations[bench.NAME] = time.perf_counter() - start
    return ok


def render_doc(report: Report, machine: dict[str, str], argv: list[str], seconds: float) -> str:
    """The Markdown page: machine, table, notes, method per benchmark."""
    command = " ".join(["./dev bench", *argv])
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` (benchmarks/run.py); see benchmarks/README.md. "
        f"The run took {seconds / 60:.1f} min.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        "",
        "## Results",
        "",
        render_table(report.rows),
        "",
        "Figures are medians; in brackets the spread (min–max for up to 10 repetitions, the "
        "interquartile range beyond) and the number of repetitions. Ratios are the median of "
        "the ratios of each side-by-side pair (the sides alternate A/B/A/B).",
        "",
        "## Method and notes",
        "",
    ]
    for bench in BENCHES:
        if bench.NAME not in report.durations:
            continue
        took = report.durations[bench.NAME]
        lines += [f"**{bench.NUMBER}. {bench.NAME}** ({took:.0f} s). {bench.METHOD}", ""]
        lines += [f"- {note}" for note in report.notes.get(bench.NAME, [])]
        lines += [""] if report.notes.get(bench.NAME) else []
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    """Run the selected benchmarks; 1 when any of them failed to measure."""
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="orchestra-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, reps_override=args.reps, workdir=workdir)
    start = time.perf_counter()
    try:
        ok = run_all(ctx, args.selected)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(render_table(ctx.report.rows))
    for bench, notes in ctx.report.notes.items():
        for note in notes:
            print(f"- {bench}: {note}")
    print(f"total: {seconds / 60:.1f} min")
    output = args.output or (None if args.quick else DOC)
    if output:
        doc = render_doc(ctx.report, machine_description(ctx.uv), argv, seconds)
        output.write_text(doc)
        print(f"written to {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
