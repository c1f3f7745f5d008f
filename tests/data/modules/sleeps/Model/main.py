"""Sleep, recording start and end times; with --tree true, start a child whose child detaches."""

import json
import os
import subprocess
import sys
import time

out = sys.argv[1]
opts = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
seconds = float(opts.get("--seconds", "0.5"))
pids = {"module": os.getpid()}
if opts.get("--tree") == "true":
    grandchild = "import os, time; os.setsid(); time.sleep(600)"
    child = (
        "import subprocess, sys, time;"
        f"g = subprocess.Popen([sys.executable, '-c', {grandchild!r}]);"
        "print(g.pid, flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    pids["child"] = proc.pid
    pids["grandchild"] = int(proc.stdout.readline())
# written whole, then renamed: a test that sees the file may read it at once
with open(os.path.join(out, "pids.json.part"), "w") as handle:
    json.dump(pids, handle)
os.replace(os.path.join(out, "pids.json.part"), os.path.join(out, "pids.json"))
start = time.time()
time.sleep(seconds)
with open(os.path.join(out, "times.json"), "w") as handle:
    json.dump({"start": start, "end": time.time()}, handle)
