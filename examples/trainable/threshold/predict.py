"""Predict: ``python -m threshold.predict OUTPUT_DIR --start T --stop T``, the model in
``ORCHESTRA_MODEL_DIR``; writes the intervals it classifies as events to ``events.txt``."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from threshold.data import STEP, samples


def main() -> None:
    """Classify every sample; one catalog line per run of events."""
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--start", required=True)
    parser.add_argument("--stop", required=True)
    options = parser.parse_args()
    model_dir = Path(os.environ["ORCHESTRA_MODEL_DIR"])
    model = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    lines, current = [], None
    for moment, magnitude, _ in samples(options.start, options.stop):
        p = 1 / (1 + math.exp(-(model["weight"] * magnitude + model["bias"])))
        if p >= 0.5:
            current = current or [moment, moment, p]
            current[1], current[2] = moment + STEP, max(current[2], p)
        elif current:
            lines.append(current)
            current = None
    if current:
        lines.append(current)
    with open(options.output_dir / "events.txt", "w", encoding="utf-8") as out:
        for begin, end, p in lines:
            out.write(f"{begin.isoformat()} {end.isoformat()} {p:.3f}\n")


if __name__ == "__main__":
    main()
