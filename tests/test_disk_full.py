"""A full disk is an answer: a real server on a 40 MB file system that a module fills."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.errors import InsufficientStorage, disk_full, is_disk_full
from tests.support.helpers import Answer, wait_for
from tests.support.paths import DATA, EXAMPLES
from tests.support.server import ServerProcess

FILLER = DATA / "modules" / "filler"
SIZE_MB = 40
MIN_FREE_MB = 8


def test_a_full_disk_is_recognised_through_wrappers() -> None:
    import errno
    import sqlite3

    from sqlalchemy.exc import OperationalError

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert is_disk_full(OperationalError("COMMIT", {}, full))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    error = disk_full("/data")
    assert isinstance(error, InsufficientStorage) and error.http_status == 507
    assert "/data" in error.message


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs mounted for the test (we are root in CI), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _expect(answer: Answer, status: int, what: str) -> Any:
    assert answer.status == status, (what, answer.status, answer.body[:500])
    assert answer.headers.get("Content-Type", "").startswith("application/json"), what
    return answer.json() if answer.body else None


def _free_mb(folder: Path) -> float:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize / 2**20


def _register(server: ServerProcess, folder: Path) -> int:
    body = _expect(server.call("POST", "/modules", {"source": str(folder)}), 202, "register")
    module = wait_for(
        lambda: _expect(server.call("GET", f"/module/{body['id']}"), 200, "module"),
        lambda m: m["status"] != "installing", timeout=120, what="the installation",
    )  # fmt: skip
    assert module["status"] == "installed", module
    return int(body["id"])


def test_a_full_disk_answers_507_and_everything_carries_on_when_space_is_back(
    small_disk: Path, uv_cache: Path
) -> None:
    server = ServerProcess(small_disk / "home", uv_cache, min_free_mb=str(MIN_FREE_MB))
    server.start()
    try:
        _the_story(server, small_disk)
    finally:
        server.close()


def _the_story(server: ServerProcess, disk: Path) -> None:
    filler, catalog = _register(server, FILLER), _register(server, EXAMPLES / "catalog")
    started = _expect(server.call("POST", f"/module/{filler}/run", {}), 202, "run the filler")
    task = _expect(server.call("GET", f"/task/{started['task']}?wait=60"), 200, "the filler")
    # the task died for lack of space, and says so; it is not left `running`
    assert task["status"] == "error", task
    assert "no space left on the disk of the data folder" in task["error"], task
    assert _free_mb(disk) < MIN_FREE_MB
    # while the disk is full: runs wait (or are refused 507), registrations are refused
    waiting = []
    for _ in range(3):
        answer = server.call("POST", f"/module/{catalog}/run", {"parameter": "Bx"})
        assert answer.status in (202, 507), (answer.status, answer.body)
        body = answer.json()
        if answer.status == 202:
            assert body["status"] == "queued", body
            waiting.append(body["task"])
        else:
            assert "no space left on the disk" in body["error"], body
    refused = _expect(server.call("POST", "/modules", {"source": str(FILLER)}), 507, "register")
    assert "ORCHESTRA_MIN_FREE_MB" in refused["error"] and str(disk) in refused["error"]
    _expect(server.call("GET", "/tasks"), 200, "the list")
    _expect(server.call("GET", f"/task/{task['id']}/log"), 200, "the log")
    _expect(server.call("GET", "/health"), 200, "health")
    # deleting the ended task frees the space; the waiting tasks then run by themselves
    answer = server.call("DELETE", f"/task/{task['id']}")
    assert answer.status == 204, answer.body
    assert _free_mb(disk) > MIN_FREE_MB
    for task_id in waiting:
        done = _expect(server.call("GET", f"/task/{task_id}?wait=60"), 200, "a waiting task")
        assert done["status"] == "done", done
    after = _expect(server.call("POST", f"/module/{catalog}/run", {"parameter": "Bx"}), 202, "run")
    assert (
        _expect(server.call("GET", f"/task/{after['task']}?wait=60"), 200, "run")["status"]
        == "done"
    )
    _register(server, DATA / "modules" / "echo")
    assert "Traceback" not in server.log() or "disk is full" in server.log()
