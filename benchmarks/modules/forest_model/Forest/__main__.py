"""Predict with the pickled forest: python -m Forest OUT --start S --stop E."""

import argparse
import pathlib
import pickle

from Forest.features import features

MODEL = pathlib.Path(__file__).with_name("model.pkl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--start", required=True)
    parser.add_argument("--stop", required=True)
    args = parser.parse_args()
    with MODEL.open("rb") as handle:
        forest = pickle.load(handle)
    rows = features(args.start, args.stop)
    rows["prediction"] = forest.predict(rows.to_numpy())
    rows.to_csv(pathlib.Path(args.out) / "prediction.csv", index_label="time")


main()
