"""Import pandas (or the package named by --module) and exit."""

import argparse
import importlib

parser = argparse.ArgumentParser()
parser.add_argument("output")
parser.add_argument("--module", default="pandas")
importlib.import_module(parser.parse_args().module)
