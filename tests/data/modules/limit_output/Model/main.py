"""Write 256 KiB files into the output folder until something stops it (no file is large)."""

import os
import sys

chunk = b"o" * (256 * 1024)
number = 0
while True:
    with open(os.path.join(sys.argv[1], f"part-{number:06d}.bin"), "wb") as handle:
        handle.write(chunk)
    number += 1
