"""What building source-only requirements in the sandbox costs a registration.

A module needing a pure-Python package and a C extension, both offered only as source
archives by a package index on loopback, is registered in a fresh data folder with the
sandbox required and with it off; cold (a new installer cache each time) and warm (the
cache already holds the built wheels). Prints the medians and the ratios.

    .venv/bin/python benchmarks/bench_source_builds.py [repetitions]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.support.pypi import serving  # noqa: E402
from tests.test_sourcebuilds import needing, publish_both  # noqa: E402

from orchestra.config import load_settings  # noqa: E402
from orchestra.service import Service  # noqa: E402


def register_once(base: Path, index_url: str, sandbox: str, cache: Path) -> float:
    """Seconds one registration of the module takes, in a new data folder."""
    home = Path(tempfile.mkdtemp(dir=base))
    settings = load_settings(
        {"home": home / "home", "uv_cache": str(cache), "sandbox": sandbox,
         "index_url": index_url, "compile_bytecode": False},
        environ={},
    )  # fmt: skip
    module = needing(home / "module", ["plainparse", "fastcalc"])
    service = Service(settings)
    try:
        started = time.perf_counter()
        info = service.register(str(module))
        elapsed = time.perf_counter() - started
    finally:
        service.close()
    assert info.status == "installed", info.error
    return elapsed


def fresh(base: Path) -> Path:
    """A new, empty installer cache."""
    return Path(tempfile.mkdtemp(dir=base))


def main(repetitions: int) -> None:
    """Median seconds for each mode, sandbox required against off."""
    with tempfile.TemporaryDirectory() as scratch, serving(Path(scratch) / "index") as index:
        publish_both(index)
        base, url = Path(scratch), index.url + "/simple"
        medians = {}
        for warmth in ("cold", "warm"):
            warm_cache = Path(tempfile.mkdtemp(dir=base))
            for mode in ("off", "required"):
                register_once(base, url, mode, warm_cache)  # fills the warm cache, untimed
                times = [
                    register_once(base, url, mode, warm_cache if warmth == "warm" else fresh(base))
                    for _ in range(repetitions)
                ]
                medians[warmth, mode] = statistics.median(times)
                print(f"{warmth:5} sandbox={mode:9} median {medians[warmth, mode]:.2f} s "
                      f"(n={repetitions})")  # fmt: skip
        for warmth in ("cold", "warm"):
            ratio = medians[warmth, "required"] / medians[warmth, "off"]
            print(f"{warmth}: sandboxed build / unsandboxed = {ratio:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
