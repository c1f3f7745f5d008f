"""Reading what a supervisor left: outputs, the standard error's tail, each way of ending."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestra.executors import outcomes
from orchestra.storage.files import TaskFolder


def test_outputs_are_regular_files_inside_the_folder_only(tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("aa")
    (out / "sub" / "b.txt").write_text("b")
    (tmp_path / "secret").write_text("outside")
    (out / "leak").symlink_to(tmp_path / "secret")
    (out / "alias").symlink_to(out / "a.txt")
    (out / "dirlink").symlink_to(tmp_path)
    names = [(f["name"], f["size"]) for f in outcomes.scan_outputs(out)]
    assert names == [("a.txt", 2), ("alias", 2), ("sub/b.txt", 1)]


def test_the_stderr_tail_keeps_the_last_lines_only(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    folder.root.mkdir()
    folder.stderr.write_text("x" * 100_000 + "\n" + "".join(f"line {n}\n" for n in range(50)))
    tail = outcomes.stderr_tail(folder).splitlines()
    assert tail == [f"line {n}" for n in range(30, 50)]


@pytest.mark.parametrize(
    ("result", "status", "error"),
    [
        ({"reason": "exited", "exit_code": 2}, "error", "exited with status 2"),
        ({"reason": "exited", "signal": 11}, "error", "killed by signal 11 (SIGSEGV)"),
        ({"reason": "timeout", "signal": 15}, "error", "timed out after 7 s"),
        ({"reason": "killed", "signal": 15}, "killed", "killed on request"),
        ({"reason": "start_failed", "error": "No such file"}, "error", "could not start: No such"),
    ],
)
def test_each_way_of_ending_is_explained(
    tmp_path: Path, result: dict[str, object], status: str, error: str
) -> None:
    folder = TaskFolder(tmp_path, 1)
    outcome = outcomes.outcome_from_result(folder, result, {"timeout": 7})
    assert outcome.status == status
    assert (outcome.error or "").startswith(error)
