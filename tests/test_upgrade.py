"""Upgrades keep every module working: a data folder made by the first release, served today.

The first landed release (``FIRST_RELEASE``) is installed from this repository's git history
into a venv of its own, with its own pinned dependencies. Through its own command line it
registers its bundled examples and a module that waits, runs them, and leaves one task of the
waiting module running. Today's server then serves that data folder: the schema is upgraded,
the old outputs download as they were written, the running task is adopted and ends as its
process does, and every old module runs again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.storage.migrations import HEAD
from tests.support.helpers import clean_environ, wait_for, write_module
from tests.support.release import FIRST_RELEASE, install
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

# waits until the file named by its argument exists, or --seconds pass; records its pid first
WAITER = """
import os
(out / "pid.txt").write_text(str(os.getpid()))
flag, deadline = pathlib.Path(args["flag"]), time.monotonic() + float(args.get("seconds", 120))
while not flag.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
(out / "result.txt").write_text("released" if flag.exists() else "timed out")
"""


WAITER_ARGS = ["flag", ["seconds", "float"]]


class FirstRelease:
    """The first release's command line on one data folder."""

    def __init__(self, python: Path, home: Path, uv_cache: Path) -> None:
        self.python, self.cwd = python, home.parent
        self.env = {**clean_environ(), "ORCHESTRA_HOME": str(home)}
        self.env["ORCHESTRA_UV_CACHE"] = str(uv_cache)
        self.env.pop("PYTHONPATH", None)  # today's sources must not be found

    def __call__(self, *argv: str) -> dict[str, Any]:
        """Run ``python -m orchestra --json ARGV``; its answer."""
        done = subprocess.run(
            [str(self.python), "-m", "orchestra", "--json", *argv],
            env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return dict(json.loads(done.stdout))


@pytest.fixture
def first_release(tmp_path: Path, uv_cache: Path) -> FirstRelease:
    """The first release, installed from the git history, on a data folder in tmp_path."""
    python = install(FIRST_RELEASE, tmp_path / "release", uv_cache)
    return FirstRelease(python, tmp_path / "home", uv_cache)


@pytest.fixture
def flag(tmp_path: Path) -> Iterator[Path]:
    """The file that releases the waiting module; made at the end whatever happened."""
    path = tmp_path / "release-the-waiter"
    try:
        yield path
    finally:
        path.touch()


def test_a_data_folder_of_the_first_release_upgrades_and_every_module_keeps_working(
    first_release: FirstRelease, flag: Path, tmp_path: Path, uv_cache: Path
) -> None:
    home = tmp_path / "home"
    modules, old_outputs, waiting = _made_by(first_release, tmp_path, flag)
    pid_file = home / "tasks" / str(waiting) / "output" / "pid.txt"
    pid = wait_for(
        lambda: pid_file.is_file() and pid_file.read_text(), bool, timeout=30, what="pid"
    )

    server = ServerProcess(home, uv_cache, max_running="4")
    try:
        server.start()
        _assert_upgraded(home / "orchestra.db")
        for task_id, (name, content) in old_outputs.items():
            answer = server.call("GET", f"/task/{task_id}/output/{name}")
            assert (answer.status, answer.body) == (200, content)
        assert server.task(waiting)["status"] == "running"  # adopted, not settled as lost
        for name, module in modules.items():
            args = {"flag": str(flag), "seconds": 0} if name == "waiter" else {}
            task = server.wait_final(server.run(module, **args))
            assert task["status"] == "done", (name, task["error"])
            if name == "catalog":
                _assert_amda_catalog(server, task["id"])
            if name == "timeseries":  # the same module, the same arguments: the same output
                answer = server.call("GET", f"/task/{task['id']}/output/timeseries.csv")
                assert answer.body == dict(old_outputs.values())["timeseries.csv"]
        assert server.task(waiting)["status"] == "running"
        flag.touch()
        ended = server.wait_final(waiting)
        assert (ended["status"], ended["exit_code"]) == ("done", 0), ended
        assert {f["name"] for f in ended["output"]} == {"pid.txt", "result.txt"}
        assert pid_file.read_text() == pid  # the release's own process ended it: not a rerun
        assert pid_file.with_name("result.txt").read_text() == "released"
    finally:
        server.close()


def _made_by(
    first_release: FirstRelease, tmp_path: Path, flag: Path
) -> tuple[dict[str, int], dict[int, tuple[str, bytes]], int]:
    """The release registers its examples and the waiter, runs the examples and leaves the
    waiter running: the modules by folder name, the outputs by task, the running task."""
    examples = tmp_path / "release" / "source" / "examples"
    waiter = write_module(tmp_path / "waiter", name="Waiter", code=WAITER, args=WAITER_ARGS)
    modules = {
        folder.name: first_release("register", str(folder))["registered"][0]["id"]
        for folder in (examples / "catalog", examples / "timeseries", waiter)
    }
    outputs = {}
    for name in ("catalog", "timeseries"):
        task = first_release("run", str(modules[name]), "--wait")
        assert task["status"] == "done", task
        (output,) = task["output"]
        path = tmp_path / "home" / "tasks" / str(task["id"]) / "output" / output["name"]
        outputs[task["id"]] = (output["name"], path.read_bytes())
    assert sorted(outputs) == [1, 2]
    running = first_release("run", str(modules["waiter"]), f"flag={flag}")
    assert running["status"] == "running", running
    return modules, outputs, running["id"]


def _assert_upgraded(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == HEAD


def _assert_amda_catalog(server: ServerProcess, task_id: int) -> None:
    """The release's catalog example writes CSV with a line of names: converted for AMDA."""
    text = server.call("GET", f"/task/{task_id}/output/catalog.csv").body.decode()
    lines = text.splitlines()
    assert lines[0] == "# Catalog generated by Orchestra;"
    assert "# Parameter 2: id:column2; name:score; size:1; type:float;" in lines
    assert lines[-1] == "2020-01-01T18:00:00 2020-01-01T19:30:00 imf_bz 0.3678"
