"""Train: ``python -m threshold.train MODEL_DIR --epochs N --learning_rate R ...``."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from threshold.data import samples


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--start", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--learning_rate", type=float, default=0.5)
    parser.add_argument("--step_seconds", type=float, default=0.0)
    return parser.parse_args()


def _starting_point(scale: float) -> tuple[float, float]:
    """(weight, bias): from the base version when the request named one, else zero."""
    base = os.environ.get("ORCHESTRA_BASE_MODEL")
    if not base:
        return 0.0, 0.0
    model = json.loads((Path(base) / "model.json").read_text())
    return model["weight"] * scale, model["bias"]


def _epoch(data: list[tuple[float, int]], weight: float, bias: float, rate: float) -> tuple:
    """One pass of gradient descent on the log loss; new weight, bias, loss and accuracy."""
    grad_w = grad_b = loss = 0.0
    right = 0
    for x, y in data:
        p = 1 / (1 + math.exp(-(weight * x + bias)))
        grad_w += (p - y) * x
        grad_b += p - y
        loss -= math.log(max(p if y else 1 - p, 1e-12))
        right += (p >= 0.5) == bool(y)
    n = len(data)
    return weight - rate * grad_w / n, bias - rate * grad_b / n, loss / n, right / n


def main() -> None:
    """Fit, logging each epoch's figures, then write the model and its final figures."""
    options = _arguments()
    points = samples(options.start, options.stop)
    if not points:
        raise SystemExit("no samples between start and stop")
    mean = sum(m for _, m, _ in points) / len(points)
    scale = max(abs(m - mean) for _, m, _ in points) or 1.0
    data = [((m - mean) / scale, y) for _, m, y in points]
    weight, bias = _starting_point(scale)
    out = options.model_dir
    loss = accuracy = 0.0
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
        for step in range(1, options.epochs + 1):
            weight, bias, loss, accuracy = _epoch(data, weight, bias, options.learning_rate)
            log.write(json.dumps({"step": step, "loss": loss, "accuracy": accuracy}) + "\n")
            log.flush()
            time.sleep(options.step_seconds)
    # the preprocessing travels inside the model: prediction scales exactly as training did
    model = {"weight": weight / scale, "bias": bias - weight * mean / scale, "mean": mean}
    (out / "model.json").write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps({"loss": loss, "accuracy": accuracy}) + "\n")
    print(f"trained on {len(data)} samples: loss {loss:.4f}, accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
