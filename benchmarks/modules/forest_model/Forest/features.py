"""The model's inputs for a time range: one row a minute, four smooth synthetic features."""

import numpy as np
import pandas as pd


def features(start: str, stop: str) -> pd.DataFrame:
    """Minute rows from ``start`` (inclusive) to ``stop`` (exclusive)."""
    times = pd.date_range(start, stop, freq="1min", inclusive="left")
    phase = np.arange(len(times)) / 60.0
    return pd.DataFrame(
        {
            "bx": np.sin(phase),
            "by": np.cos(phase / 3.0),
            "bz": np.sin(phase / 7.0) * np.cos(phase),
            "density": 5.0 + np.sin(phase / 11.0),
        },
        index=times,
    )
