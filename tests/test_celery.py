"""The Celery executor for real: an API server, Redis, PostgreSQL and workers in namespaces.

Each worker is a separate process in its own network namespace with its own data folder;
the test reads a worker's folder only to find the pids of what it runs.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.config import load_settings
from orchestra.executors import proctree
from orchestra.executors.local import LocalExecutor
from tests.support.cluster import LEASE, Cluster, ClusterWorker, running_cluster
from tests.support.helpers import Answer, wait_for, write_module
from tests.support.netns import require_namespaces
from tests.support.paths import DATA, EXAMPLES
from tests.support.postgres import PostgresServer, require_service
from tests.support.processes import TREE, alive, host_pid

pytestmark = pytest.mark.slow

CHATTY = """
import os, sys
print("started", args.get("tag"), flush=True)
print("to stderr", file=sys.stderr, flush=True)
(out / "result.txt").write_text(f"tag={args.get('tag')} pid={os.getpid()}\\n")
(out / "more").mkdir()
(out / "more" / "second.txt").write_text("second\\n")
time.sleep(float(args.get("seconds", "0.3")))
print("finished", flush=True)
"""


def _module(root: Path, name: str, queue: str | None = None) -> Path:
    folder = write_module(
        root / name, name=name, code=CHATTY, args=[["seconds", "float"], ["tag", "str"]],
        defaults={"seconds": 0.3, "tag": "x"}, output={"type": "timeseries"},
    )  # fmt: skip
    if queue is not None:
        metadata = json.loads((folder / "metadata.json").read_text())
        metadata["install"]["queue"] = queue
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Cluster]:
    """An API server and two workers on the default queue, for the whole module."""
    require_namespaces()
    root = tmp_path_factory.mktemp("cluster")
    with running_cluster(root, postgres_server) as made:
        made.modules = {  # type: ignore[attr-defined]
            name: made.register(_module(root / "modules", name, queue))
            for name, queue in [("chatty", None), ("gpu", "gpu"), ("doomed", "doomed"),
                                ("island", "island")]
        }  # fmt: skip
        made.modules["sleeps"] = made.register(DATA / "modules" / "sleeps")  # type: ignore[attr-defined]
        made.modules["catalog"] = made.register(EXAMPLES / "catalog")  # type: ignore[attr-defined]
        made.add_worker()
        made.add_worker()
        yield made


def _module_id(cluster: Cluster, name: str) -> int:
    return int(cluster.modules[name])  # type: ignore[attr-defined]


def _ended_lines(worker: ClusterWorker) -> list[int]:
    return [int(n) for n in re.findall(r"task (\d+) ended", worker.text())]


def _occupy_both_workers(cluster: Cluster, seconds: float) -> list[int]:
    """Two tasks of ``seconds``, returned once both workers run one."""
    chatty = _module_id(cluster, "chatty")
    busy = [cluster.run(chatty, tag="busy", seconds=seconds) for _ in range(2)]
    for task_id in busy:
        wait_for(lambda t=task_id: cluster.task(t)["status"], lambda s: s == "running",
                 timeout=60, what="both workers to be busy")  # fmt: skip
    return busy


def _running_on(cluster: Cluster, task_id: int) -> dict[str, Any]:
    return cluster.wait_status(task_id, {"running", "done", "error", "killed"})


def test_twenty_tasks_spread_over_two_workers_with_outputs_and_logs(cluster: Cluster) -> None:
    chatty = _module_id(cluster, "chatty")
    ids = [cluster.run(chatty, tag=f"t{i}", seconds=0.3) for i in range(20)]
    finals = [cluster.wait_status(task_id, {"done", "error", "killed"}) for task_id in ids]
    assert [t["status"] for t in finals] == ["done"] * 20, finals
    used = {t["worker"] for t in finals}
    assert used == {"w0", "w1"}, used
    first = finals[0]
    assert {f["name"] for f in first["output"]} == {"result.txt", "more/second.txt"}
    body = cluster.call("GET", f"/task/{ids[0]}/output/result.txt").body.decode()
    assert body.startswith("tag=t0 ")
    whole = cluster.call("GET", f"/task/{ids[0]}/output")
    assert whole.status == 200 and whole.body[:2] == b"PK"  # a zip of both files
    log = cluster.call("GET", f"/task/{ids[3]}/log").json()
    assert log["stdout"] == "started t3\nfinished\n" and log["stderr"] == "to stderr\n"
    for worker in cluster.workers[:2]:  # none ran twice, nothing stays on a worker
        assert len(_ended_lines(worker)) == len(set(_ended_lines(worker)))
        assert not list((worker.home / "tasks").iterdir())


def test_a_hundred_waiters_on_a_workers_task_hold_no_thread_and_learn_its_end(
    cluster: Cluster,
) -> None:
    task_id = cluster.run(_module_id(cluster, "chatty"), tag="awaited", seconds=6)
    answers: list[Answer] = []

    def wait() -> None:
        answers.append(cluster.call("GET", f"/task/{task_id}?wait=50", timeout=60))

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(100)]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the waiters connect: far more of them than the server has threads
    assert cluster.call("GET", "/health", timeout=30).status == 200
    assert cluster.task(task_id)["status"] in {"queued", "running"}  # answered meanwhile
    for thread in threads:
        thread.join(60)
    # the end comes from the worker's process, through the database's NOTIFY
    assert [a.status for a in answers] == [200] * 100
    assert {a.json()["status"] for a in answers} == {"done"}


def test_a_worker_compiles_the_bytecode_of_what_it_builds(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    if "task sandbox: on" not in worker.text():
        require_service("bubblewrap", "without the sandbox a task writes its own .pyc files")
    # the sandbox keeps the generation read-only for the task: only the worker compiles it
    compiled = wait_for(
        lambda: list((worker.home / "installs").glob("*/code/**/__pycache__/*.pyc")),
        bool, timeout=60, what="the .pyc files of the worker's generations",
    )  # fmt: skip
    assert compiled


def test_a_catalog_is_checked_and_given_amdas_header_on_the_worker(cluster: Cluster) -> None:
    task_id = cluster.run(_module_id(cluster, "catalog"))
    final = cluster.wait_status(task_id, {"done", "error", "killed"})
    assert final["status"] == "done", final
    text = cluster.call("GET", f"/task/{task_id}/output/catalog.txt").body.decode()
    assert text.startswith("# Catalog generated by Orchestra;")
    assert "# ListStartDate: 2020-01-01T00:00:00" in text
    sizes = {f["name"]: f["size"] for f in final["output"]}
    assert sizes["catalog.txt"] == len(text.encode())  # the size recorded is the header's file


def test_a_running_task_shows_its_log_within_seconds(cluster: Cluster) -> None:
    task_id = cluster.run(_module_id(cluster, "chatty"), tag="live", seconds=60)
    assert _running_on(cluster, task_id)["status"] == "running"
    seen = wait_for(
        lambda: cluster.call("GET", f"/task/{task_id}/log").json()["stdout"],
        lambda text: "started live" in text, timeout=8, what="the running task's log",
    )  # fmt: skip
    assert "finished" not in seen
    killed = cluster.call("POST", f"/task/{task_id}/kill")
    assert killed.status == 200
    assert (
        cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=30)["status"] == "killed"
    )


def _pids(cluster: Cluster, task_id: int, worker: str) -> list[int]:
    index = int(worker.lstrip("w"))
    path = cluster.workers[index].home / "tasks" / str(task_id) / "output" / "pids.json"
    data = wait_for(
        lambda: json.loads(path.read_text()) if path.exists() else None,
        lambda found: found is not None, timeout=30, what="the module's pids",
    )  # fmt: skip
    # the pids as this machine knows them: the sandbox gives a task a pid namespace
    pids = [host_pid(int(data[key]), path.parent) for key in ("module", "child", "grandchild")]
    assert all(pid > 0 for pid in pids), pids
    return pids


def test_a_kill_stops_the_whole_tree_on_the_worker(cluster: Cluster) -> None:
    task_id = cluster.run(_module_id(cluster, "sleeps"), seconds=120, tree="true")
    record = wait_for(
        lambda: cluster.task(task_id), lambda t: t["status"] == "running" and t["worker"],
        timeout=60, what="the task to run",
    )  # fmt: skip
    pids = _pids(cluster, task_id, record["worker"])
    assert all(proctree.start_time(pid) is not None for pid in pids)
    assert cluster.call("POST", f"/task/{task_id}/kill").status == 200
    final = cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=30)
    assert final["status"] == "killed", final
    wait_for(
        lambda: [p for p in pids if proctree.start_time(p) is not None], lambda left: not left,
        timeout=20, what="the module, its child and its setsid grandchild to be gone",
    )  # fmt: skip


def test_a_killed_queued_task_never_starts(cluster: Cluster) -> None:
    chatty = _module_id(cluster, "chatty")
    busy = _occupy_both_workers(cluster, seconds=60)
    waiting = cluster.run(chatty, tag="never", seconds=0.1)
    assert cluster.task(waiting)["status"] == "queued"
    assert cluster.call("POST", f"/task/{waiting}/kill").json()["status"] == "killed"
    for task_id in busy:
        cluster.call("POST", f"/task/{task_id}/kill")
    after = cluster.run(chatty, tag="after", seconds=0.1)  # queued behind the killed one
    assert cluster.wait_status(after, {"done", "error", "killed"})["status"] == "done"
    record = cluster.task(waiting)
    assert record["status"] == "killed" and record["started"] is None and record["worker"] is None
    for worker in cluster.workers:
        assert waiting not in _ended_lines(worker)


def test_queues_route_tasks_to_the_workers_that_take_them(cluster: Cluster) -> None:
    gpu_worker = cluster.add_worker(queues="gpu", concurrency=3)
    gpu = [cluster.run(_module_id(cluster, "gpu"), seconds=0.5) for _ in range(3)]
    plain = [cluster.run(_module_id(cluster, "chatty"), seconds=0.1) for _ in range(3)]
    gpu_done = [cluster.wait_status(t, {"done", "error", "killed"}) for t in gpu]
    plain_done = [cluster.wait_status(t, {"done", "error", "killed"}) for t in plain]
    assert {t["worker"] for t in gpu_done} == {gpu_worker.name}
    assert gpu_worker.name not in {t["worker"] for t in plain_done}
    # three tasks of a module new to this worker, at once: its environment was built once
    assert gpu_worker.text().count("building the environment of generation") == 1


def test_a_sigkilled_worker_loses_its_running_task_and_its_queue_runs_elsewhere(
    cluster: Cluster,
) -> None:
    doomed = _module_id(cluster, "doomed")
    victim = cluster.add_worker(queues="doomed")
    running = cluster.run(doomed, tag="victim", seconds=120)
    wait_for(lambda: cluster.task(running)["status"], lambda s: s == "running", timeout=60,
             what="the task to run on the doomed worker")  # fmt: skip
    waiting = cluster.run(doomed, tag="next", seconds=0.1)
    victim.kill()
    began = time.monotonic()
    final = cluster.wait_status(running, {"done", "error", "killed"}, timeout=40)
    assert final["status"] == "error" and f"worker {victim.name} lost" in final["error"]
    assert time.monotonic() - began < 5 * 3  # the lease (5 s) and a few sweeps
    assert cluster.task(waiting)["status"] == "queued"
    heir = cluster.add_worker(queues="doomed")  # also stops what the dead one left running
    assert cluster.wait_status(waiting, {"done", "error", "killed"})["worker"] == heir.name
    assert cluster.task(running)["status"] == "error"  # nothing revived it


def test_a_worker_cut_off_is_settled_and_its_late_result_is_dropped(cluster: Cluster) -> None:
    island = cluster.add_worker(queues="island")
    task_id = cluster.run(_module_id(cluster, "island"), tag="cut", seconds=12)
    wait_for(lambda: cluster.task(task_id)["status"], lambda s: s == "running", timeout=60,
             what="the task to run on the island")  # fmt: skip
    island.namespace.cut()
    try:
        final = cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=40)
        assert final["status"] == "error" and f"worker {island.name} lost" in final["error"]
    finally:
        island.namespace.restore()
    wait_for(island.text, lambda text: "settled elsewhere" in text, timeout=60,
             what="the worker to learn that its task was settled")  # fmt: skip
    record = cluster.task(task_id)
    assert record["status"] == "error" and record["output"] is None


def _tree_module(cluster: Cluster, queue: str) -> int:
    """The ``sleeps`` module (a child and a detached grandchild) on a queue of its own."""
    folder = cluster.root / "modules" / f"tree-{queue}"
    shutil.copytree(DATA / "modules" / "sleeps", folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["name"], metadata["install"]["queue"] = f"Sleeps on {queue}", queue
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return cluster.register(folder)


def _running_tree(cluster: Cluster, module: int) -> tuple[int, list[int]]:
    """A task of ``module`` started with its tree, once running: its id and its three pids."""
    task_id = cluster.run(module, seconds=300, tree="true")
    record = wait_for(
        lambda: cluster.task(task_id), lambda t: t["status"] == "running" and t["worker"],
        timeout=90, what="the task to run",
    )  # fmt: skip
    pids = _pids(cluster, task_id, record["worker"])
    assert len(alive(pids)) == 3
    return task_id, pids


def _gone_within(pids: list[int], seconds: float, began: float) -> None:
    wait_for(lambda: alive(pids), lambda left: not left, timeout=seconds + 10,
             what="the task's processes to end")  # fmt: skip
    took = time.monotonic() - began
    assert took < seconds, f"the task's processes outlived the lease: {took:.1f} s"


def test_a_sigkilled_workers_task_tree_ends_with_it(cluster: Cluster) -> None:
    worker = cluster.add_worker(queues="sigkilled")
    task_id, pids = _running_tree(cluster, _tree_module(cluster, "sigkilled"))
    worker.kill()
    _gone_within(pids, float(LEASE), time.monotonic())
    final = cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=40)
    assert final["status"] == "error" and f"worker {worker.name} lost" in final["error"]


def test_a_cut_off_worker_stops_its_task_tree_within_the_lease(cluster: Cluster) -> None:
    worker = cluster.add_worker(queues="severed")
    task_id, pids = _running_tree(cluster, _tree_module(cluster, "severed"))
    worker.namespace.cut()
    try:
        _gone_within(pids, float(LEASE), time.monotonic())
        final = cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=40)
        assert final["status"] == "error" and f"worker {worker.name} lost" in final["error"]
    finally:
        worker.namespace.restore()
    assert f"stopping task {task_id}: its lease could not be renewed" in worker.text()
    worker.stop()


def test_a_worker_restarted_under_its_name_stops_what_an_earlier_run_left(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = cluster.add_worker(queues="phoenix")
    worker.stop()
    # a supervisor that no lifeline ties to the new run (one still in its grace period, or
    # one an older release left), in the worker's own data folder
    pid_file = tmp_path / "pids.json"
    left = LocalExecutor(load_settings({"home": worker.home}, environ={}))
    left.launch(987654, {"argv": [sys.executable, "-c", TREE, str(pid_file)], "cwd": "/",
                         "env": {}, "timeout": 600, "grace": 1.0})  # fmt: skip
    wait_for(pid_file.exists, bool, timeout=20, what="the leftover tree to start")
    pids = json.loads(pid_file.read_text())
    assert len(alive(pids)) == 3
    worker.start(queues="phoenix")
    wait_for(lambda: worker.text().count(" ready."), lambda n: n == 2, timeout=90,
             what="the worker to be ready again")  # fmt: skip
    assert alive(pids) == []
    assert "stopping task 987654, left running by an earlier run" in worker.text()
    assert not (worker.home / "tasks" / "987654").exists()
    worker.stop()


def test_a_broker_restart_loses_no_queued_task(cluster: Cluster) -> None:
    chatty = _module_id(cluster, "chatty")
    busy = _occupy_both_workers(cluster, seconds=3)
    queued = [cluster.run(chatty, tag=f"q{i}", seconds=0.1) for i in range(6)]
    cluster.redis.restart()  # no persistence: every queued message is gone
    finals = [
        cluster.wait_status(t, {"done", "error", "killed"}, timeout=120) for t in busy + queued
    ]
    assert [t["status"] for t in finals] == ["done"] * 8, finals
    ended = _ended_lines(cluster.workers[0]) + _ended_lines(cluster.workers[1])
    for task_id in busy + queued:
        assert ended.count(task_id) == 1, task_id
    for worker in cluster.workers[:2]:  # running tasks are kept, quietly, through the loss
        assert "optional breaking change" not in worker.text()


def _run_as(cluster: Cluster, token: str, user: str | None, module_id: int, **args: Any) -> int:
    from tests.support.helpers import http

    headers = {"Authorization": f"Bearer {token}", **({"X-Orchestra-User": user} if user else {})}
    answer = http("POST", f"{cluster.url}/module/{module_id}/run", json_body=args,
                  headers=headers)  # fmt: skip
    assert answer.status == 202, answer.body
    return int(answer.json()["task"])


@pytest.mark.parametrize("two_users", [False, True], ids=["two-tokens", "two-users-of-one-token"])
def test_workers_take_the_fairest_task_not_the_next_message(
    cluster: Cluster, two_users: bool
) -> None:
    """A message only wakes a worker: a lone task starts within one task's end of a long
    queue that another submitter filled before it."""
    from tests.support.helpers import make_token

    chatty = _module_id(cluster, "chatty")
    suffix = "users" if two_users else "tokens"
    front = make_token(cluster.database, f"front-{suffix}", "run")
    other = front if two_users else make_token(cluster.database, f"batch-{suffix}", "run")
    many = [_run_as(cluster, front, "alice" if two_users else None, chatty, seconds=1.5)
            for _ in range(8)]  # fmt: skip
    lone = _run_as(cluster, other, "bob" if two_users else None, chatty, seconds=0.1)
    finals = [cluster.wait_status(t, {"done", "error", "killed"}, timeout=120)
              for t in [*many, lone]]  # fmt: skip
    assert {t["status"] for t in finals} == {"done"}, finals
    # the first task to start after the lone one was queued is the lone one, however many of
    # the long queue had started before it came (a loaded machine submits the eight slowly)
    queued_at = finals[-1]["created"]
    after = sorted((t for t in finals if t["started"] >= queued_at), key=lambda t: t["started"])
    shown = [(t["id"], t["started"]) for t in after]
    assert len(after) >= 2, f"the long queue had ended before the lone task came: {shown}"
    # two workers claiming in the same instant may record one start time: either came first
    first = [t["id"] for t in after if t["started"] == after[0]["started"]]
    assert lone in first, shown
    assert (finals[-1]["submitted_by"], finals[-1]["user"]) == (
        ("front-users", "bob") if two_users else ("batch-tokens", None)
    )


def test_a_deterministic_module_s_answer_is_reused_without_a_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    code = "import os\n(out / 'answer.txt').write_text(os.urandom(8).hex())"
    folder = write_module(
        tmp_path / "answers", name="answers", code=code, extra={"deterministic": True}
    )
    module = cluster.register(folder)
    first = cluster.wait_status(cluster.run(module, start="2020"), {"done", "error", "killed"})
    assert first["status"] == "done" and first["worker"] in {"w0", "w1"}, first
    assert first["start"] == "cold"
    answer = cluster.call("POST", f"/module/{module}/run", {"start": "2020"}).json()
    assert answer["status"] == "done"  # answered by the API at once: no worker involved
    second = cluster.task(answer["task"])
    assert second["reused_from"] == first["id"] and second["worker"] is None
    body = cluster.call("GET", f"/task/{first['id']}/output/answer.txt").body
    assert cluster.call("GET", f"/task/{second['id']}/output/answer.txt").body == body
    fresh = cluster.run(module, start="2020", fresh=True)
    again = cluster.wait_status(fresh, {"done", "error", "killed"})
    assert again["reused_from"] is None and again["worker"] in {"w0", "w1"}, again
    assert cluster.call("GET", f"/task/{fresh}/output/answer.txt").body != body


def test_a_worker_with_warm_starts_runs_its_tasks_warm(cluster: Cluster, tmp_path: Path) -> None:
    if "task sandbox: on" not in cluster.workers[0].text():
        require_service("bubblewrap", "warm starts need the task sandbox")
    worker = cluster.add_worker(queues="warmq", warm="1")
    folder = _module(tmp_path, "warmed", queue="warmq")
    module = cluster.register(folder)
    starts = []
    for attempt in range(30):
        task_id = cluster.run(module, tag=f"w{attempt}", seconds=0)
        final = cluster.wait_status(task_id, {"done", "error", "killed"})
        assert final["status"] == "done" and final["worker"] == worker.name, final
        starts.append(final["start"])
        if final["start"] == "warm":
            break
    assert starts[0] == "cold" and starts[-1] == "warm", starts
    body = cluster.call("GET", f"/task/{task_id}/output/result.txt").body.decode()
    assert body.startswith(f"tag=w{attempt} ")
    worker.stop()


def test_a_module_updated_or_removed_is_read_again_at_its_next_submission(
    cluster: Cluster, tmp_path: Path
) -> None:
    def version(number: str) -> Path:
        shutil.rmtree(tmp_path / "changing", ignore_errors=True)  # the source, rewritten
        code = f'(out / "v.txt").write_text("{number}")'
        return write_module(tmp_path / "changing", name="changing", code=code,
                            extra={"version": number})  # fmt: skip

    module_id = cluster.register(version("0.1"))
    first = cluster.run(module_id)  # the server remembers the generation this one read
    assert cluster.wait_status(first, {"done", "error"})["status"] == "done"
    version("0.2")
    assert cluster.call("POST", f"/module/{module_id}/update").status == 202
    wait_for(
        lambda: cluster.call("GET", f"/module/{module_id}").json(),
        lambda m: m["status"] == "installed" and m["version"] == "0.2", timeout=180,
        what="the update",
    )  # fmt: skip
    second = cluster.run(module_id)
    assert cluster.wait_status(second, {"done", "error"})["status"] == "done"
    assert cluster.call("GET", f"/task/{second}/output/v.txt").body == b"0.2"
    assert cluster.call("DELETE", f"/module/{module_id}").status == 204
    refused = cluster.call("POST", f"/module/{module_id}/run", {})
    assert refused.status in (404, 409), refused.body
    assert cluster.call("GET", f"/tasks?module={module_id}").json()["total"] == 2
