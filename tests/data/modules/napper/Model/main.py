"""Write pid.txt, append a line to runs.txt, sleep, write result.txt, exit with --code."""

import os
import sys
import time

out = sys.argv[1]
opts = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
seconds = float(opts.get("--seconds", "1"))
with open(os.path.join(out, "pid.txt"), "w") as handle:
    handle.write(str(os.getpid()))
with open(os.path.join(out, "runs.txt"), "a") as handle:
    handle.write(f"{os.getpid()} {time.time()}\n")  # a second run would add a line
print(f"started, sleeping {seconds} s", flush=True)
time.sleep(seconds)
with open(os.path.join(out, "result.txt"), "w") as handle:
    handle.write(f"slept {seconds}\n")
print("finished", flush=True)
sys.exit(int(opts.get("--code", "0")))
