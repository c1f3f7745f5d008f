"""Example module: write a synthetic time series between start and stop as CSV."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

STEP = timedelta(minutes=1)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--stop", type=datetime.fromisoformat, required=True)
    parser.add_argument("--amplitude", type=float, default=1.5)
    parser.add_argument("--period_minutes", type=int, default=30)
    return parser.parse_args(argv)


def signal(minutes: np.ndarray, amplitude: float, period: int) -> np.ndarray:
    base = amplitude * np.sin(2 * np.pi * minutes / period)
    return base + 0.1 * np.cos(2 * np.pi * minutes / 7)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.stop <= args.start or args.period_minutes <= 0:
        print("stop must be after start and period_minutes positive", file=sys.stderr)
        return 2
    count = int((args.stop - args.start) / STEP) + 1
    minutes = np.arange(count, dtype=float)
    values = signal(minutes, args.amplitude, args.period_minutes)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with open(args.output_dir / "timeseries.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "value"])
        for index, value in enumerate(values):
            moment = args.start + index * STEP
            writer.writerow([moment.isoformat(), f"{value:.6f}"])
    print(f"wrote {count} points from {args.start.isoformat()} to {args.stop.isoformat()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
