"""Each limit holds and names itself: one module per limit, run through the real HTTP API."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.executors import sandbox
from orchestra.executors.local import LocalExecutor
from orchestra.service import Service
from tests.support.helpers import http, wait_for
from tests.support.paths import DATA
from tests.support.postgres import require_service
from tests.support.processes import children, naming
from tests.support.server import LiveServer

MODULES = DATA / "modules"
STATE = sandbox.detect("auto")


@pytest.fixture(params=["cold", "warm"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, uv_cache: Path) -> Settings:
    """The server's limits: each test module crosses one of them (or its own, lower one);
    its tasks start cold, or warm where they can (the limits hold for both)."""
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "max_running": 2,
         "task_memory_mb": 256, "task_cpu_seconds": 1, "task_output_mb": 5,
         "task_processes": 20, "task_timeout": 120, "warm": request.param == "warm"},
        environ={},
    )  # fmt: skip


def _supervisor_groups(task_dir: Path) -> list[str]:
    """The cgroups the task's supervisor made that are still there."""
    identity = json.loads((task_dir / "result.json").read_text().splitlines()[0])
    bases = [Path(b) for b in (STATE.memory_cgroup, STATE.pids_cgroup) if b]
    return [str(g) for b in bases for g in b.glob(f"orchestra-task-{identity['pid']}-*")]


CASES = [
    ("limit_memory", "memory limit of 256 MB exceeded"),
    ("limit_cpu", "CPU time limit of 1 s exceeded"),
    ("limit_output", "output limit of 5 MB exceeded"),
    ("limit_processes", "process limit of 20 exceeded"),
    ("limit_own", "memory limit of 64 MB exceeded"),  # the module's own, below the server's
]


@pytest.mark.parametrize(("module", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_task_over_its_limit_ends_in_error_naming_it(
    live_server: LiveServer, service: Service, module: str, message: str
) -> None:
    if module == "limit_processes" and not STATE.pids_cgroup:
        require_service("a pids cgroup", "the process limit is not enforced without one")
    module_id = service.register(str(MODULES / module)).id
    url = live_server.url
    wanted = "warm" if service.settings.warm else "cold"
    for _ in range(20):  # warm: the first task runs cold, the warm interpreter starts after it
        started = http("POST", f"{url}/module/{module_id}/run", json_body={})
        assert started.status == 202, started.body
        task_id = started.json()["task"]
        task = http("GET", f"{url}/task/{task_id}?wait=60").json()
        if task["start"] == wanted:
            break
    assert task["start"] == wanted, task
    assert task["status"] == "error", task
    assert task["error"].startswith(message), task["error"]
    task_dir = service.settings.tasks_dir / str(task_id)
    wait_for(lambda: naming(task_dir / "output"), lambda left: not left, timeout=10,
             what="the task's processes")  # fmt: skip
    # the supervisor removes its cgroups after it has reported the end, in a child of its own
    wait_for(lambda: _supervisor_groups(task_dir), lambda left: not left, timeout=10,
             what="the task's cgroups")  # fmt: skip
    health = http("GET", f"{url}/health")
    assert health.status == 200 and health.json()["status"] == "ok"
    if module == "limit_output":
        written = sum(f.stat().st_size for f in (task_dir / "output").iterdir())
        print(f"output limit 5 MB: the task had written {written / 2**20:.1f} MB when stopped")


def _groups_holding(pid: int) -> list[Path]:
    base = Path(STATE.pids_cgroup)
    return [g for g in base.glob("orchestra-task-*") if str(pid) in _members(g)]


def _members(group: Path) -> list[str]:
    try:
        return (group / "cgroup.procs").read_text().split()
    except OSError:
        return []


def _waiting_group(executor: LocalExecutor) -> tuple[int, Path]:
    """The supervisor forked ahead of the next task, and the cgroup it has joined already."""
    if not STATE.pids_cgroup:
        require_service("a pids cgroup", "the process limit is not enforced without one")
    spare = _waiting_supervisor(executor)
    (group,) = wait_for(lambda: _groups_holding(spare), bool, timeout=10,
                        what="the waiting supervisor's cgroup")  # fmt: skip
    return spare, group


def _waiting_supervisor(executor: LocalExecutor) -> int:
    launcher = executor._launcher
    assert launcher is not None and launcher._proc is not None
    pid = launcher._proc.pid
    found = wait_for(lambda: children(pid), bool, timeout=10, what="a supervisor waiting")
    return int(found[0])


def test_a_waiting_supervisor_joins_its_task_cgroup_before_the_task_comes(
    settings: Settings, tmp_path: Path
) -> None:
    # joining a cgroup can wait a whole RCU grace period: it must not be on the task's path
    executor = LocalExecutor(settings)
    executor.open()
    try:
        spare, group = _waiting_group(executor)
        assert (group / "pids.max").read_text().strip() == "max"  # no task yet, no limit yet
        out = tmp_path / "out"
        out.mkdir()
        limits = {"processes": 7, "pids_cgroup": STATE.pids_cgroup, "overhead": 1}
        request = {"argv": [sys.executable, "-c", "import time; time.sleep(1)"],
                   "env": {"PATH": "/usr/bin:/bin"}, "cwd": str(out), "timeout": 30,
                   "grace": 1, "limits": limits}  # fmt: skip
        handle = executor.launch(1, request)
        assert handle["pid"] == spare  # the waiting supervisor took the task, in its group
        wait_for(lambda: (group / "pids.max").read_text().strip(), lambda v: v == "8",
                 timeout=10, what="the task's process limit")  # fmt: skip
        wait_for(lambda: _members(group), lambda m: len(m) >= 2, timeout=10,
                 what="the module in the supervisor's cgroup")  # fmt: skip
        ended = threading.Event()
        assert executor.watch(handle, ended.set)
        assert ended.wait(30)
        wait_for(group.exists, lambda there: not there, timeout=10, what="the task's cgroup")
    finally:
        executor.close()


def test_a_waiting_supervisor_removes_its_cgroup_when_the_server_stops(settings: Settings) -> None:
    executor = LocalExecutor(settings)
    executor.open()
    try:
        _, group = _waiting_group(executor)
    finally:
        executor.close()
    wait_for(group.exists, lambda there: not there, timeout=10, what="the unused cgroup")
