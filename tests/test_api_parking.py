"""Waiting for a task over HTTP holds no thread: many waiters, and everyone else answered."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra.api.parking import _with_wait
from tests.support.helpers import http, wait_for, write_module

if TYPE_CHECKING:
    from orchestra.service import Service
    from tests.support.server import LiveServer

WAITERS = 200  # far more than the server's 16 threads
SLEEPER = """
time.sleep(float(args.get("seconds", "60")))
(out / "slept.txt").write_text(args.get("seconds", "60"))
"""


def _sleeper(service: Service, tmp_path: Path) -> int:
    folder = write_module(
        tmp_path / "sleeper", name="sleeper", code=SLEEPER, args=[["seconds", "float"]]
    )
    return service.register(str(folder)).id


def _run(url: str, module_id: int, seconds: float) -> int:
    answer = http("POST", f"{url}/module/{module_id}/run", json_body={"seconds": seconds})
    assert answer.status == 202, answer.body
    return int(answer.json()["task"])


def _wait_all(
    url: str, paths: list[str], timeout: float = 60
) -> tuple[list[Any], list[threading.Thread]]:
    """Start one thread per GET; each answer lands in the list at its index."""
    answers: list[Any] = [None] * len(paths)

    def fetch(index: int, path: str) -> None:
        answer = http("GET", url + path, timeout=timeout)
        json = answer.headers.get("Content-Type", "").startswith("application/json")
        answers[index] = (answer.status, answer.json() if json else answer.body, time.monotonic())

    threads = [threading.Thread(target=fetch, args=item, daemon=True) for item in enumerate(paths)]
    for thread in threads:
        thread.start()
    return answers, threads


def _parked(live_server: LiveServer, paths: list[str]) -> tuple[list[Any], list[threading.Thread]]:
    """The GETs started, returned once the server has parked every one of them."""
    api = live_server.api
    assert api is not None
    answers, threads = _wait_all(live_server.url, paths)
    wait_for(api.dispatcher.parked, lambda n: n == len(paths), timeout=30, what="waiters parked")
    return answers, threads


def _held(api: Any) -> int:
    return sum(type(entry).__name__ == "_Held" for entry in list(api._map.values()))


def test_two_hundred_waiters_are_parked_and_health_answers_meanwhile(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    url, api = live_server.url, live_server.api
    assert api is not None
    task_id = _run(url, _sleeper(service, tmp_path), 8)
    answers, threads = _parked(live_server, [f"/task/{task_id}?wait=50"] * WAITERS)
    # the loop no longer asks the parked connections at each turn: stand-ins hold their place
    assert _held(api) == WAITERS
    health = http("GET", f"{url}/health", timeout=20)  # the waiters' time is 50 s
    assert health.status == 200
    # answered while the task still runs: no thread was held by those waiting for it
    assert http("GET", f"{url}/task/{task_id}").json()["status"] == "running"
    for thread in threads:
        thread.join(60)
    assert [a[0] for a in answers] == [200] * WAITERS
    assert {a[1]["status"] for a in answers} == {"done"}
    assert api.dispatcher.parked() == 0 and _held(api) == 0


def test_a_wait_ends_with_its_time_and_answers_the_task_as_it_is(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    task_id = _run(live_server.url, _sleeper(service, tmp_path), 30)
    start = time.monotonic()
    answer = http("GET", f"{live_server.url}/tasks/{task_id}?wait=1.5", timeout=20)
    assert answer.status == 200 and answer.json()["status"] in {"queued", "running"}
    assert time.monotonic() - start >= 1.4
    http("POST", f"{live_server.url}/task/{task_id}/kill")


def test_waiting_for_an_ended_or_unknown_task_answers_at_once(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    url = live_server.url
    task_id = _run(url, _sleeper(service, tmp_path), 0)
    first = http("GET", f"{url}/task/{task_id}?wait=30", timeout=40).json()
    assert first["status"] == "done"
    start = time.monotonic()
    assert http("GET", f"{url}/task/{task_id}?wait=30", timeout=40).json()["status"] == "done"
    missing = http("GET", f"{url}/task/99999?wait=30", timeout=40)
    assert missing.status == 404 and "99999" in missing.json()["error"]
    assert time.monotonic() - start < 20  # neither waited for its 30 s
    bad = http("GET", f"{url}/task/{task_id}?wait=soon", timeout=10)
    assert bad.status == 400 and "wait" in bad.json()["error"]
    # the final row kept for the waiters that come just after the end goes with the task
    assert http("DELETE", f"{url}/task/{task_id}").status == 204
    gone = http("GET", f"{url}/task/{task_id}?wait=30", timeout=40)
    assert gone.status == 404, gone.body


def test_a_killed_task_releases_its_waiters_with_the_final_status(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    url = live_server.url
    task_id = _run(url, _sleeper(service, tmp_path), 60)
    paths = [f"/task/{task_id}?wait=50", f"/ui/task/{task_id}?wait=50&partial=1"]
    answers, threads = _parked(live_server, paths)
    assert http("POST", f"{url}/task/{task_id}/kill").json()["status"] == "killed"
    for thread in threads:
        thread.join(30)
    assert answers[0][1]["status"] == "killed"
    assert answers[1][0] == 200 and b"killed" in answers[1][1]


def test_the_time_left_replaces_the_wait_and_keeps_the_other_parameters() -> None:
    assert _with_wait("wait=30&partial=1", 12.3456) == "partial=1&wait=12.346"
    assert _with_wait("", 0.0) == "wait=0.000"


def test_a_token_that_may_not_read_is_refused_at_once_not_after_the_wait(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    url, module_id = live_server.url, _sleeper(service, tmp_path)
    runner = service.access.create_token("front", role="run").token
    worker = service.access.create_token("box", role="worker").token
    answer = http(
        "POST", f"{url}/module/{module_id}/run", json_body={"seconds": 30},
        headers={"Authorization": f"Bearer {runner}"},
    )  # fmt: skip
    task_id = int(answer.json()["task"])
    start = time.monotonic()
    for token, status in (("not-a-token", 401), (worker, 403)):
        refused = http("GET", f"{url}/task/{task_id}?wait=30", timeout=40,
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert refused.status == status, refused.body
    assert time.monotonic() - start < 20  # neither was held for its 30 s
    allowed = http("GET", f"{url}/task/{task_id}?wait=1", timeout=20,
                   headers={"Authorization": f"Bearer {runner}"})  # fmt: skip
    assert allowed.status == 200 and allowed.json()["status"] in {"queued", "running"}
    http("POST", f"{url}/task/{task_id}/kill", headers={"Authorization": f"Bearer {runner}"})
