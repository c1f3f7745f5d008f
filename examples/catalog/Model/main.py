"""Command line of the example catalog module."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from pathlib import Path

from Model.events import find_events


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="Model", description=__doc__)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--stop", type=datetime.fromisoformat, required=True)
    parser.add_argument("--parameter", default="imf_bz")
    parser.add_argument("--spacing_hours", type=int, default=6)
    parser.add_argument("--min_score", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.stop <= args.start or args.spacing_hours <= 0:
        print("stop must be after start and spacing_hours positive", file=sys.stderr)
        return 2
    spacing = timedelta(hours=args.spacing_hours)
    events = find_events(args.parameter, args.start, args.stop, spacing, args.min_score)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    # AMDA's text format: one interval a line, blank-separated; Orchestra adds the header
    with open(args.output_dir / "catalog.txt", "w") as handle:
        handle.write("# start stop parameter score\n")
        for event in events:
            start, stop = event.start.isoformat(), event.stop.isoformat()
            handle.write(f"{start} {stop} {event.parameter} {event.score}\n")
    print(f"found {len(events)} events of {args.parameter}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
