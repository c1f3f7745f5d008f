"""Write a smoothed synthetic time series between --start and --stop."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    """Parse the arguments and write series.csv into the output folder."""
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--start", default="2020-01-01T00:00:00")
    parser.add_argument("--stop", default="2020-01-02T00:00:00")
    args = parser.parse_args()
    index = pd.date_range(args.start, args.stop, freq="1min")
    noise = np.random.default_rng(0).normal(size=len(index))
    series = pd.Series(noise, index=index).rolling(15, min_periods=1).mean()
    series.to_csv(Path(args.output) / "series.csv", header=["value"])


main()
