"""Write a megabyte at a time until the disk refuses (the error ends the module)."""

import os
import sys

chunk = b"f" * (1024 * 1024)
print("filling the disk", flush=True)
with open(os.path.join(sys.argv[1], "fill.bin"), "wb") as handle:
    while True:
        handle.write(chunk)
        handle.flush()
