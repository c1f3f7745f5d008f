"""200 run requests at once against a real server running two tasks at a time.

Every request must be answered 202, every task must end ``done``, and the module's shared
log must hold exactly 200 distinct runs: nothing lost, nothing run twice, never more than
two at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import Answer, http, most_at_once, wait_for
from tests.support.paths import DATA
from tests.support.server import ServerProcess

REQUESTS = 200
MAX_RUNNING = 2


@pytest.fixture
def server(tmp_path: Path, uv_cache: Path) -> Iterator[ServerProcess]:
    """A real server on a fresh data folder, two tasks at a time, tasks unsandboxed.

    The marker module appends each run to one shared file outside its task folder: that file
    is how this test sees every run at once, and the sandbox (tests/test_sandbox.py) hides it.
    """
    process = ServerProcess(
        tmp_path / "home", uv_cache, max_running=str(MAX_RUNNING), sandbox="off"
    )
    try:
        process.start()
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_two_hundred_simultaneous_runs_are_all_answered_and_each_runs_exactly_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    module = server.register(DATA / "modules" / "marker")
    shared = tmp_path / "markers.log"
    answers: dict[int, Answer | BaseException] = {}
    barrier = threading.Barrier(REQUESTS)

    def send(number: int) -> None:
        body = {"marker": f"m{number}", "log": str(shared)}
        barrier.wait(timeout=60)
        try:  # each call opens its own connection
            answers[number] = http(
                "POST", f"{server.url}/module/{module}/run", json_body=body, timeout=120
            )
        except BaseException as exc:
            answers[number] = exc

    began = time.monotonic()
    threads = [threading.Thread(target=send, args=(n,)) for n in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    answered_in = time.monotonic() - began
    accepted = [a for a in answers.values() if isinstance(a, Answer) and a.status == 202]
    task_ids = {int(a.json()["task"]) for a in accepted}

    def counts() -> dict[str, int]:
        return dict(server.call("GET", "/health").json()["tasks"])

    final = wait_for(
        counts, lambda c: c["queued"] == 0 and c["running"] == 0, timeout=240, what="the queue"
    )
    wall = time.monotonic() - began
    lines = [line.split() for line in shared.read_text().splitlines()]
    markers = [marker for _, marker, _, _ in lines]
    peak = most_at_once([(float(start), float(end)) for _, _, start, end in lines])
    figures = {
        "requests": REQUESTS, "answered_202": len(accepted), "distinct_tasks": len(task_ids),
        "done": final["done"], "runs_logged": len(lines), "distinct_runs": len(set(markers)),
        "wall_seconds": round(wall, 1), "answer_seconds": round(answered_in, 1),
        "max_concurrency": peak,
    }  # fmt: skip
    print("\nload:", json.dumps(figures))
    (tmp_path.parent / "load-figures.json").write_text(json.dumps(figures))
    assert len(accepted) == REQUESTS, [a for a in answers.values() if a not in accepted][:3]
    assert len(task_ids) == REQUESTS
    assert final["done"] == REQUESTS and final["error"] == 0 and final["killed"] == 0
    assert sorted(markers) == sorted(f"m{n}" for n in range(REQUESTS))  # once each
    assert sorted(int(task) for task, _, _, _ in lines) == sorted(task_ids)
    assert peak <= MAX_RUNNING
