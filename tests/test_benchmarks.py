"""The benchmark suite still runs end to end (smoke mode); its figures are never asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import clean_environ

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import Stats, disk_usage, paired_ratios  # noqa: E402

ROWS_PER_BENCH = {"1": 3, "2": 2, "3": 3, "4": 3, "5": 2, "6": 4, "7": 1, "8": 4, "9": 4,
                  "10": 5, "11": 2, "12": 3, "13": 4, "14": 3, "15": 1}  # fmt: skip


@pytest.mark.slow
def test_the_quick_run_writes_a_table_with_every_row_and_the_machine(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    env = clean_environ()
    argv = [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--output", str(output)]
    argv += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    page = output.read_text()
    rows = re.findall(r"^\| (\d+) \| (.*)$", page, flags=re.MULTILINE)
    counts = {number: sum(1 for n, _ in rows if n == number) for number in ROWS_PER_BENCH}
    assert counts == ROWS_PER_BENCH
    assert not [text for _, text in rows if "FAILED" in text]
    for key in ("CPU", "cores", "memory", "Python", "uv", "date"):
        assert f"- {key}: " in page
    assert "| 4 | task overhead" in done.stdout  # the same table is printed
    floors = re.search(r"Floors of what the Celery path adds.*Together ([0-9.]+) ms", page)
    assert floors is not None and float(floors.group(1)) > 0  # each floor measured something


def test_disk_usage_counts_a_hard_linked_file_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    big = tmp_path / "a" / "data"
    big.write_bytes(os.urandom(256 * 1024))
    alone = disk_usage([tmp_path / "a"])
    os.link(big, tmp_path / "b" / "data")
    assert disk_usage([tmp_path / "a", tmp_path / "b"]) < alone + 64 * 1024
    assert disk_usage([tmp_path / "b"]) >= 256 * 1024


def test_spread_is_min_max_for_few_values_and_quartiles_for_many() -> None:
    few = Stats((3.0, 1.0, 2.0))
    assert (few.median, few.low, few.high) == (2.0, 1.0, 3.0)
    many = Stats(tuple(float(v) for v in range(1, 22)))
    assert (many.low, many.high) == (6.0, 16.0)
    assert paired_ratios([2.0, 9.0], [1.0, 3.0]).median == 2.5
