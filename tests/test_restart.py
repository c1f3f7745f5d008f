"""Tasks and registrations survive a server that dies: real `serve` processes, real signals.

Each test runs ``python -m orchestra serve`` on a free loopback port with its data folder in
``tmp_path``, kills it (SIGKILL, or a clean SIGTERM), starts a new one on the same data
folder and checks what the new one says about every task and module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, ROOT
from tests.helpers import Answer, free_port, http, wait_for

NAPPER = DATA / "modules" / "napper"


class ServerProcess:
    """``python -m orchestra serve`` on one data folder; may be stopped and started again."""

    def __init__(self, home: Path, uv_cache: Path, **settings: str) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
        self.env.update(
            ORCHESTRA_HOME=str(home), ORCHESTRA_UV_CACHE=str(uv_cache),
            ORCHESTRA_POLL_INTERVAL="0.2", PYTHONPATH=str(ROOT / "src"),
        )  # fmt: skip
        self.env.update({f"ORCHESTRA_{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        """Start a server and wait until it answers /health."""
        port = free_port()
        self.starts += 1
        log = (self.home.parent / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestra", "serve", "--port", str(port)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self._answers, bool, timeout=30, what="the server's /health")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited early:\n{self.log()}")
        try:
            # 401 counts: with ORCHESTRA_PROTECT_READS even /health needs the token
            return http("GET", self.url + "/health", timeout=2).status in {200, 401}
        except OSError:
            return False

    def log(self) -> str:
        """The current server's log."""
        return (self.home.parent / f"server-{self.starts}.log").read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the server to end; its exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    @property
    def pid(self) -> int:
        """The running server's pid."""
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Answer:
        """One JSON request to the server."""
        return http(method, self.url + path, json_body=body, timeout=timeout)

    def register(self, folder: Path, timeout: float = 180) -> int:
        """Register a module folder and wait until it is installed; its id."""
        answer = self.call("POST", "/modules", {"source": str(folder)})
        assert answer.status == 202, answer.body
        module_id = int(answer.json()["id"])
        module = wait_for(
            lambda: self.call("GET", f"/module/{module_id}").json(),
            lambda m: m["status"] != "installing", timeout=timeout, what="the installation",
        )  # fmt: skip
        assert module["status"] == "installed", module.get("error")
        return module_id

    def run(self, module_id: int, **args: Any) -> int:
        """Start a task; its id."""
        answer = self.call("POST", f"/module/{module_id}/run", args)
        assert answer.status == 202, answer.body
        return int(answer.json()["task"])

    def task(self, task_id: int) -> dict[str, Any]:
        """A task's record."""
        return dict(self.call("GET", f"/task/{task_id}").json())

    def wait_final(self, task_id: int, timeout: float = 60) -> dict[str, Any]:
        """A task's record once it has ended."""
        return dict(
            wait_for(
                lambda: self.task(task_id),
                lambda t: t["status"] in {"done", "error", "killed"},
                timeout=timeout,
                what=f"task {task_id}",
            )  # fmt: skip
        )

    def close(self) -> None:
        """Kill the server if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


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
        _kill_quietly(int(path.read_text()))
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
    return int(path.read_text())


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
    for task_id, pid in pids.items():  # the same process finished the work: not a rerun
        assert int(_task_file(server.home, task_id, "pid.txt").read_text()) == pid
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
    flag = tmp_path / "building.flag"
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
