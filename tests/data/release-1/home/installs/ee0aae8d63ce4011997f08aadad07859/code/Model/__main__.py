"""Write the arguments to result.csv, say so on both streams, sleep, exit with --code."""

import os
import sys
import time

out = sys.argv[1]
opts = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
with open(os.path.join(out, "result.csv"), "w") as handle:
    for name, value in sorted(opts.items()):
        handle.write(f"{name.lstrip('-')},{value}\n")
print("release one ran", flush=True)
print("a line on standard error", file=sys.stderr, flush=True)
time.sleep(float(opts.get("--seconds", "0")))
sys.exit(int(opts.get("--code", "0")))
