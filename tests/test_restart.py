"""Tasks and registrations survive a server that dies: real `serve` processes, real signals.

Each test runs ``python -m orchestra serve`` on a free loopback port with its data folder in
``tmp_path``, kills it (SIGKILL, or a clean SIGTERM), starts a new one on the same data
folder and checks what the new one says about every task and module.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import wait_for
from tests.support.paths import DATA
from tests.support.processes import host_pid
from tests.support.server import ServerProcess

NAPPER = DATA / "modules" / "napper"


@pytest.fixture
def server(tmp_path: Path, uv_cache: Path) -> Iterator[ServerProcess]:
    """A served data folder in tmp_path, two tasks at a time; killed at the end."""
    process = ServerProcess(tmp_path / "home", uv_cache, max_running="2")
    try:
        yield process
    finally:
        process.close()
        _kill_leftover_tasks(tmp_path / "home")


def _kill_leftover_tasks(home: Path) -> None:
    # a failed test must not leave sleeping modules behind
    for path in home.glob("tasks/*/output/pid.txt"):
        _kill_quietly(host_pid(int(path.read_text()), path.parent))
    for path in home.glob("tasks/*/supervisor.json"):
        _kill_quietly(int(json.loads(path.read_text()).get("pid", 0)))


def _kill_quietly(pid: int) -> None:
    if pid > 0:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _task_file(home: Path, task_id: int, name: str) -> Path:
    return home / "tasks" / str(task_id) / "output" / name


def _module_pid(home: Path, task_id: int) -> int:
    path = _task_file(home, task_id, "pid.txt")
    wait_for(lambda: path.is_file() and path.read_text(), bool, timeout=30, what="pid.txt")
    return host_pid(int(path.read_text()), path.parent)  # the pid outside the sandbox


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_running_and_queued_tasks_survive_a_server_stop_and_finish_once(
    server: ServerProcess, signum: int
) -> None:
    server.start()
    module = server.register(NAPPER)
    running = [server.run(module, seconds=4, code=0) for _ in range(2)]
    queued = [server.run(module, seconds=1, code=0) for _ in range(2)]
    pids = {task: _module_pid(server.home, task) for task in running}
    reported = {task: _task_file(server.home, task, "pid.txt").read_text() for task in running}
    assert [server.task(t)["status"] for t in queued] == ["queued", "queued"]

    status = server.stop(signum)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 0), server.log()
    assert all(_alive(pid) for pid in pids.values()), "a module died with the server"

    server.start()
    for task_id in running + queued:
        task = server.wait_final(task_id)
        assert task["status"] == "done" and task["exit_code"] == 0, task
        names = {f["name"] for f in task["output"]}
        assert {"pid.txt", "runs.txt", "result.txt"} <= names
        runs = _task_file(server.home, task_id, "runs.txt").read_text().splitlines()
        assert len(runs) == 1, f"task {task_id} ran {len(runs)} times"
    for task_id in pids:  # the same process finished the work: not a rerun
        assert _task_file(server.home, task_id, "pid.txt").read_text() == reported[task_id]
        assert _task_file(server.home, task_id, "result.txt").read_text() == "slept 4.0\n"
    assert server.call("GET", "/tasks?status=running").json()["tasks"] == []
    print(f"\nrestart after {signal.Signals(signum).name}: 4 of 4 tasks done, each ran once")


@pytest.mark.slow
def test_a_real_exit_status_is_kept_across_a_restart(server: ServerProcess) -> None:
    server.start()
    module = server.register(NAPPER)
    task_id = server.run(module, seconds=3, code=7)
    _module_pid(server.home, task_id)
    server.stop(signal.SIGKILL)
    server.start()
    task = server.wait_final(task_id)
    assert task["status"] == "error" and task["exit_code"] == 7, task
    assert _task_file(server.home, task_id, "result.txt").is_file()


@pytest.mark.slow
def test_a_task_whose_processes_died_while_the_server_was_down_ends_in_error(
    server: ServerProcess,
) -> None:
    server.start()
    module = server.register(NAPPER)
    task_id = server.run(module, seconds=60)
    module_pid = _module_pid(server.home, task_id)
    supervisor = json.loads((server.home / "tasks" / str(task_id) / "supervisor.json").read_text())
    server.stop(signal.SIGKILL)
    for pid in (int(supervisor["pid"]), module_pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _alive(module_pid), lambda alive: not alive, timeout=10, what="module")

    server.start()
    task = server.wait_final(task_id, timeout=30)
    assert task["status"] == "error", task
    assert "supervisor died" in task["error"] and str(supervisor["pid"]) in task["error"]
    assert server.call("GET", "/tasks?status=running").json()["tasks"] == []


def _slow_package(folder: Path, flag: Path, seconds: float) -> Path:
    """A local package whose in-tree build backend sleeps, so its install takes a while."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = []
            build-backend = "slowbackend"
            backend-path = ["."]

            [project]
            name = "slowpkg"
            version = "0.1"
            """
        )
    )
    backend = f"""\
        import pathlib, time, zipfile

        def _build(wheel_directory):
            pathlib.Path({str(flag)!r}).write_text("building")
            time.sleep({seconds})
            name = "slowpkg-0.1-py3-none-any.whl"
            with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as wheel:
                wheel.writestr("slowpkg/__init__.py", "")
                info = "slowpkg-0.1.dist-info/"
                meta = "Metadata-Version: 2.1\\nName: slowpkg\\nVersion: 0.1\\n"
                wheel.writestr(info + "METADATA", meta)
                tags = "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
                wheel.writestr(info + "WHEEL", tags)
                wheel.writestr(info + "RECORD", "")
            return name

        def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
            return _build(wheel_directory)

        def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
            return _build(wheel_directory)
        """
    (folder / "slowbackend.py").write_text(textwrap.dedent(backend))
    return folder


@pytest.mark.slow
def test_a_registration_killed_half_way_leaves_nothing_half_made(
    tmp_path: Path, uv_cache: Path
) -> None:
    # in the installer cache: a build in the sandbox writes nowhere else outside its scratch
    flag = uv_cache / f"{tmp_path.name}-building.flag"
    package = _slow_package(tmp_path / "slowpkg", flag, seconds=6)
    module = tmp_path / "module"
    for path in NAPPER.rglob("*"):
        target = module / path.relative_to(NAPPER)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (module / "requirements.txt").write_text(f"slowpkg @ file://{package}\n")
    server = ServerProcess(tmp_path / "home", uv_cache, allow_requirement_options="1")
    try:
        server.start()
        answer = server.call("POST", "/modules", {"source": str(module)})
        assert answer.status == 202
        module_id = answer.json()["id"]
        wait_for(flag.is_file, bool, timeout=60, what="the slow build to start")
        installs = server.home / "installs"
        assert [p.name for p in installs.iterdir()], "no generation folder under construction"
        server.stop(signal.SIGKILL)

        server.start()
        record = server.call("GET", f"/module/{module_id}").json()
        assert record["status"] == "error" and "interrupted" in record["error"], record
        time.sleep(8)  # the orphaned build finishes meanwhile: it must not bring a folder back
        assert list(installs.iterdir()) == []
        assert list((server.home / "tmp").iterdir()) == []
        assert server.call("GET", "/modules").json()[0]["status"] == "error"
        again = server.register(NAPPER)  # the name is free again
        assert server.call("GET", f"/module/{again}").json()["name"] == "Napper"
    finally:
        server.close()
