"""Train and pickle the benchmark's random forest into Forest/model.pkl (run at benchmark time)."""

import pathlib
import pickle
import sys

import numpy as np
from sklearn.ensemble import RandomForestClassifier

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from Forest.features import features

rows = features("2019-01-01", "2019-01-08").to_numpy()
labels = (rows[:, 0] * rows[:, 2] > 0.1).astype(np.int8)
forest = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0, n_jobs=1)
forest.fit(rows, labels)
target = pathlib.Path(__file__).parent / "Forest" / "model.pkl"
target.write_bytes(pickle.dumps(forest, protocol=pickle.HIGHEST_PROTOCOL))
