"""--mode file: write big.bin of --megabytes MiB; --mode stdout: print that much instead."""

import os
import sys

out = sys.argv[1]
opts = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
megabytes = int(opts.get("--megabytes", "64"))
chunk = (bytes(range(256)) * 4096)[: 1024 * 1024]
if opts.get("--mode") == "stdout":
    line = b"x" * 1023 + b"\n"
    for _ in range(megabytes):
        sys.stdout.buffer.write(line * 1024)
    sys.stdout.flush()
else:
    with open(os.path.join(out, "big.bin"), "wb") as handle:
        for _ in range(megabytes):
            handle.write(chunk)
