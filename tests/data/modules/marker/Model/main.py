"""Append 'task marker start end' to the file named by --log, and write marker.txt."""

import os
import sys
import time

out = sys.argv[1]
opts = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
start = time.time()
time.sleep(0.05)
line = f"{os.environ.get('ORCHESTRA_TASK_ID')} {opts['--marker']} {start} {time.time()}\n"
# one small write with O_APPEND: lines from concurrent tasks never interleave
fd = os.open(opts["--log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
try:
    os.write(fd, line.encode())
finally:
    os.close(fd)
with open(os.path.join(out, "marker.txt"), "w") as handle:
    handle.write(opts["--marker"])
