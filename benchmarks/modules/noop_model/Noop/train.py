"""Write a model of ``--megabytes`` MB in ten files of random bytes (a benchmark's training)."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("--megabytes", type=int, default=50)
options = parser.parse_args()
for index in range(10):
    with open(os.path.join(options.model_dir, f"weights-{index}.bin"), "wb") as handle:
        handle.write(os.urandom(options.megabytes * 1024 * 1024 // 10))
