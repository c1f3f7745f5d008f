"""Each limit holds and names itself: one module per limit, run through the real HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.executors import sandbox
from orchestra.service import Service
from tests.support.helpers import http, wait_for
from tests.support.paths import DATA
from tests.support.postgres import require_service
from tests.support.processes import naming
from tests.support.server import LiveServer

MODULES = DATA / "modules"
STATE = sandbox.detect("auto")


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path) -> Settings:
    """The server's limits: each test module crosses one of them (or its own, lower one)."""
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "max_running": 2,
         "task_memory_mb": 256, "task_cpu_seconds": 1, "task_output_mb": 5,
         "task_processes": 20, "task_timeout": 120},
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
    started = http("POST", f"{url}/module/{module_id}/run", json_body={})
    assert started.status == 202, started.body
    task_id = started.json()["task"]
    task = http("GET", f"{url}/task/{task_id}?wait=60").json()
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
