"""The local executor: launching supervisors, hearing of their end, killing, adopting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uv import find_uv_bin

from orchestra.config import Settings
from orchestra.executors.base import TaskSpec
from orchestra.executors.local import LocalExecutor
from tests.support.processes import TREE, alive, children, wait_for_file


@pytest.fixture
def local(settings: Settings) -> Settings:
    """Settings with a short kill grace period; cold starts, whose launch requests are read
    here (warm starts have tests/test_warm.py)."""
    return settings.with_overrides(kill_grace=1.0, warm=False)


@pytest.fixture
def task_dir(local: Settings) -> Path:
    """The folder of task 1, which every test here starts."""
    return local.tasks_dir / "1"


@pytest.fixture
def executor(local: Settings) -> Iterator[LocalExecutor]:
    """An executor with its launcher and exit watcher running, as in a server."""
    ex = LocalExecutor(local)
    ex.open()
    try:
        yield ex
    finally:
        ex.close()


def _spec(code: str, *args: str, **extra: Any) -> dict[str, Any]:
    """A launch request: what the supervisor runs, with its paths resolved."""
    return {
        "argv": [sys.executable, "-c", code, *args],
        "cwd": "/",
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "timeout": 60,
        "grace": 1.0,
        **extra,
    }


def _result(task_dir: Path) -> dict[str, Any]:
    return dict(json.loads((task_dir / "result.json").read_text().splitlines()[-1]))


def test_the_watcher_hears_at_once_that_a_task_ended(
    executor: LocalExecutor, task_dir: Path, tmp_path: Path
) -> None:
    handle = executor.launch(1, _spec("import sys; sys.exit(0)"))
    ended = threading.Event()
    assert executor.watch(handle, ended.set)
    assert ended.wait(20)
    assert _result(task_dir)["exit_code"] == 0
    assert not executor.is_alive(handle)


def test_without_a_server_a_task_starts_as_a_detached_supervisor(
    local: Settings, task_dir: Path
) -> None:
    executor = LocalExecutor(local)  # never opened: the command line's way
    handle = executor.launch(1, _spec("import time; time.sleep(0.5)"))
    assert executor.is_alive(handle)
    assert not executor.watch(handle, lambda: None)
    wait_for_file(task_dir / "result.json")
    assert _result(task_dir)["exit_code"] == 0
    deadline = time.monotonic() + 10
    while executor.is_alive(handle):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_kill_stops_the_module_its_child_and_a_detached_grandchild(
    executor: LocalExecutor, task_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids.json"
    handle = executor.launch(1, _spec(TREE, str(pid_file)))
    ended = threading.Event()
    executor.watch(handle, ended.set)
    wait_for_file(pid_file)
    pids = json.loads(pid_file.read_text())
    assert len(alive(pids)) == 3
    executor.kill(handle)
    assert ended.wait(1.0 + 2.0)
    assert _result(task_dir)["reason"] == "killed"
    assert alive(pids) == []


def test_a_new_executor_adopts_a_live_supervisor_and_sees_its_real_exit_code(
    local: Settings, task_dir: Path
) -> None:
    first = LocalExecutor(local)
    first.open()
    code = "import sys, time; time.sleep(1.0); sys.exit(7)"
    handle = json.loads(json.dumps(first.launch(1, _spec(code))))
    first.close()  # the old server is gone; its supervisor is not
    second = LocalExecutor(local)
    second.open()
    try:
        assert second.is_alive(handle)
        ended = threading.Event()
        assert second.watch(handle, ended.set)
        assert ended.wait(20)
    finally:
        second.close()
    assert _result(task_dir)["exit_code"] == 7


def test_kill_without_a_supervisor_stops_the_module_tree_directly(
    executor: LocalExecutor, task_dir: Path, tmp_path: Path
) -> None:
    handle = executor.launch(1, _spec("import time; time.sleep(600)"))
    wait_for_file(task_dir / "supervisor.json")
    module_pid = json.loads((task_dir / "supervisor.json").read_text())["module_pid"]
    os.kill(handle["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while executor.is_alive(handle):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert alive([module_pid]) == [module_pid]
    executor.kill(handle)
    assert alive([module_pid]) == []
    assert not (task_dir / "result.json").exists()


def test_a_pid_reused_by_another_process_does_not_look_alive(
    executor: LocalExecutor, task_dir: Path, tmp_path: Path
) -> None:
    handle = executor.launch(1, _spec("pass"))
    impostor = {**handle, "pid": os.getpid()}  # a live pid with another start time
    assert not executor.is_alive(impostor)


def test_a_launched_supervisor_leaves_logs_and_one_record_and_nothing_else(
    executor: LocalExecutor, task_dir: Path, tmp_path: Path
) -> None:
    spec = _spec("print('hi')")
    handle = executor.launch(1, spec)
    ended = threading.Event()
    executor.watch(handle, ended.set)
    assert ended.wait(20)
    assert _result(task_dir)["exit_code"] == 0
    assert (task_dir / "stdout.log").read_text() == "hi\n"
    # the spec lives in the task's row; the identity and the result share one file
    names = sorted(p.name for p in task_dir.iterdir())
    assert names == ["output", "result.json", "stderr.log", "stdout.log"]
    identity = json.loads((task_dir / "result.json").read_text().splitlines()[0])
    assert identity["pid"] == handle["pid"]


def test_the_handle_is_found_from_the_task_folder_by_another_executor(
    executor: LocalExecutor, task_dir: Path, local: Settings
) -> None:
    assert LocalExecutor(local).find(1) is None  # nothing started there
    handle = executor.launch(1, _spec("import time; time.sleep(30)"))
    wait_for_file(task_dir / "supervisor.json")
    other = LocalExecutor(local)  # another process's executor: nothing in memory
    found = other.find(1)
    assert found is not None
    assert (found["pid"], found["start"]) == (handle["pid"], handle["start"])
    assert other.is_alive(found)
    other.kill(found)
    wait_for_file(task_dir / "result.json")
    assert _result(task_dir)["reason"] == "killed"


def test_the_waiting_supervisor_exits_with_the_launcher(local: Settings) -> None:
    executor = LocalExecutor(local)
    executor.open()
    launcher = executor._launcher
    assert launcher is not None and launcher._proc is not None
    launcher_pid = launcher._proc.pid
    deadline = time.monotonic() + 10
    while not children(launcher_pid):  # the supervisor forked ahead of the first task
        assert time.monotonic() < deadline, "no supervisor waits for a task"
        time.sleep(0.02)
    waiting = children(launcher_pid)
    executor.close()
    deadline = time.monotonic() + 10
    while alive(waiting):
        assert time.monotonic() < deadline, "a waiting supervisor outlived its launcher"
        time.sleep(0.02)


def test_a_spec_naming_a_generation_runs_its_module_with_its_interpreter_and_code(
    executor: LocalExecutor, local: Settings, task_dir: Path
) -> None:
    install = local.installs_dir / "gen-1"
    venv = [find_uv_bin(), "venv", "--quiet", "--python", sys.executable, str(install / "env")]
    subprocess.run(venv, check=True)  # a real one: the sandbox reads where its interpreter lives
    (install / "code" / "mod").mkdir(parents=True)
    main = "import os, sys; print(os.getcwd(), os.environ['VIRTUAL_ENV'], sys.argv[1:])"
    (install / "code" / "mod" / "__main__.py").write_text(main)
    spec = TaskSpec(1, 5, "gen-1", "mod", ("--start", "a b"), timeout=30, grace=1.0)
    handle = executor.start(spec.to_json())
    ended = threading.Event()
    assert executor.watch(handle, ended.set)
    assert ended.wait(20)
    out = (task_dir / "stdout.log").read_text().strip()
    output = task_dir / "output"
    assert out == f"{install / 'code'} {install / 'env'} {[str(output), '--start', 'a b']}"
    outcome = executor.outcome(1, spec.to_json())
    assert outcome is not None and outcome.status == "done"


def test_a_spec_that_is_not_one_cannot_start(executor: LocalExecutor) -> None:
    with pytest.raises(OSError, match="not a task spec"):
        executor.start({"task_id": 1, "generation": "g"})


def test_a_spec_stored_by_the_first_release_runs_in_this_data_folder(
    executor: LocalExecutor, local: Settings
) -> None:
    old = "/elsewhere/home/installs/gen-7"
    spec = {
        "task_id": 3,
        "argv": [f"{old}/env/bin/python", "-m", "Model", "/elsewhere/out", "--a", "1"],
        "cwd": f"{old}/code", "env": {}, "timeout": 60, "grace": 1.0, "outputs": ["r.csv"],
    }  # fmt: skip
    request = executor.launch_request(3, spec)
    install = local.installs_dir / "gen-7"
    output = local.tasks_dir / "3" / "output"
    # the end of the argv: a sandbox, where the machine has one, comes before it
    assert request["argv"][-6:] == [
        str(install / "env/bin/python"),
        "-m",
        "Model",
        str(output),
        "--a",
        "1",
    ]
    assert request["cwd"] == str(install / "code")
    assert TaskSpec.from_json(spec).outputs == ("r.csv",)


# a process that owns a tied executor (as a worker does), starts one task tree and waits
_OWNER = """
import json, sys, time
from orchestra.config import load_settings
from orchestra.executors.local import LocalExecutor
settings = load_settings({"home": sys.argv[1], "kill_grace": 1.0}, environ={})
executor = LocalExecutor(settings, tied=True)
executor.open()
executor.launch(1, json.loads(sys.argv[2]))
print("started", flush=True)
time.sleep(600)
"""


def test_a_tied_executors_tasks_stop_when_its_process_is_sigkilled(
    local: Settings, task_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids.json"
    spec = json.dumps(_spec(TREE, str(pid_file)))
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(local.home), spec], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "started\n"
        wait_for_file(pid_file)
        pids = json.loads(pid_file.read_text())
        assert len(alive(pids)) == 3
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        began = time.monotonic()
        wait_for_file(task_dir / "result.json", timeout=10)
        deadline = time.monotonic() + 5
        while alive(pids):
            assert time.monotonic() < deadline, f"outlived their owner: {alive(pids)}"
            time.sleep(0.02)
        assert time.monotonic() - began < 1.0 + 2.0  # the grace period, and no more
    finally:
        owner.kill()
        owner.wait()
    assert _result(task_dir)["reason"] == "orphaned"


def test_closing_a_tied_executor_stops_its_tasks_and_an_untied_ones_go_on(
    local: Settings, task_dir: Path, tmp_path: Path
) -> None:
    for tied, survives in ((False, True), (True, False)):
        pid_file = tmp_path / f"pids-{tied}.json"
        executor = LocalExecutor(local, tied=tied)
        executor.open()
        handle = executor.launch(1, _spec(TREE, str(pid_file)))
        wait_for_file(pid_file)
        pids = json.loads(pid_file.read_text())
        executor.close()
        time.sleep(0.5)
        assert (alive(pids) == pids) is survives, (tied, alive(pids))
        LocalExecutor(local).kill(handle)
        wait_for_file(task_dir / "result.json")
        (task_dir / "result.json").unlink()
