"""Sleep ``--seconds``, then write one small file: a task that waits and uses no CPU."""

import sys
import time

options = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
time.sleep(float(options.get("--seconds", "2")))
with open(sys.argv[1] + "/done.txt", "w") as handle:
    handle.write("ok\n")
