"""Fail loudly: 100 lines on standard error, the reason last."""

import sys

for number in range(100):
    print(f"noise line {number}", file=sys.stderr)
print("ValueError: the data parameter is unknown", file=sys.stderr)
sys.exit(3)
