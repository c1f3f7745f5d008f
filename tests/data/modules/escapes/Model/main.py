"""Write ok.txt, then links leading out of the output folder: to /etc/passwd and to the root."""

import os
import sys

out = sys.argv[1]
with open(os.path.join(out, "ok.txt"), "w") as handle:
    handle.write("inside\n")
os.symlink("/etc/passwd", os.path.join(out, "passwd"))
os.symlink("/", os.path.join(out, "root"))
os.symlink("../..", os.path.join(out, "up"))
