"""Write three files of ``--megabytes`` MB each: random bytes (``--kind random``) or CSV text.

The files have one name whatever they hold, so the server cannot judge them by type.
"""

import os
import random
import sys

BLOCK = 4 * 1024 * 1024


def csv_block(seed: int) -> bytes:
    """About BLOCK bytes of measurements as CSV lines, like a time series a module writes."""
    rnd = random.Random(seed)
    lines = []
    size = 0
    row = 0
    while size < BLOCK:
        line = (
            f"2026-01-{1 + row % 28:02d}T{row % 24:02d}:{row % 60:02d}:{row * 7 % 60:02d},"
            f"{rnd.random() * 100:.4f},{rnd.gauss(0, 1):.5f},{rnd.randint(0, 999)},"
            f"sensor-{row % 17}\n"
        )
        lines.append(line)
        size += len(line)
        row += 1
    return "".join(lines).encode()


def main(argv: list[str]) -> None:
    folder = argv[0]
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    kind = options.get("--kind", "random")
    total = int(options.get("--megabytes", "300")) * 1_000_000
    text = [csv_block(seed) for seed in range(8)] if kind == "csv" else []
    for part in (1, 2, 3):
        with open(os.path.join(folder, f"part-{part}.dat"), "wb") as handle:
            written = 0
            while written < total:
                block = text[written // BLOCK % 8] if text else os.urandom(BLOCK)
                block = block[: total - written]
                handle.write(block)
                written += len(block)


main(sys.argv[1:])
