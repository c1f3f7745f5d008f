"""Write the two declared files and an undeclared scratch file."""

import os
import sys

out = sys.argv[1]
skip = sys.argv[3] if sys.argv[2:3] == ["--skip"] else ""
for name, text in (("a.csv", "t,v\n1,2\n"), ("b.txt", "bee\n")):
    if name != skip:
        with open(os.path.join(out, name), "w") as handle:
            handle.write(text)
with open(os.path.join(out, "scratch.tmp"), "w") as handle:
    handle.write("not an output")
