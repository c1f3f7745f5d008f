"""The task sandbox: what is detected, and a probe module that tries every way out of it."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.config import load_settings
from orchestra.errors import InvalidInput, InvalidMetadata
from orchestra.executors import sandbox
from orchestra.manifest import parse_manifest
from tests.support.helpers import clean_environ, http, wait_for
from tests.support.paths import DATA, ROOT
from tests.support.postgres import require_service
from tests.support.server import ServerProcess

TOKEN = "probe-token-0123456789"
PROBE = DATA / "modules" / "probe"
STATE = sandbox.detect("auto")


@pytest.fixture
def needs_sandbox() -> None:
    """Skip (fail in CI) where the machine cannot make the sandbox."""
    if not STATE.active:
        require_service("the task sandbox", STATE.detail)


def _metadata(**extra: Any) -> dict[str, Any]:
    return {
        "name": "m", "description": "", "args": [], "output": {"type": "catalog"},
        "install": {"executable": "m", "files": ["m"]}, **extra,
    }  # fmt: skip


def test_a_module_declares_network_and_limits() -> None:
    manifest = parse_manifest(_metadata(network=True, limits={"memory_mb": 64, "processes": 8}))
    assert manifest.network is True
    assert manifest.limits == {"memory_mb": 64, "processes": 8}
    assert parse_manifest(_metadata()).network is False


def test_bad_network_and_limits_are_named_with_their_keys() -> None:
    with pytest.raises(InvalidMetadata) as caught:
        parse_manifest(
            _metadata(network="yes", limits={"memory_mb": 0, "disk": 5, "cpu_seconds": 1.5})
        )
    problems = " | ".join(caught.value.problems)
    assert "network: must be true or false" in problems
    assert "limits.memory_mb: must be a positive whole number" in problems
    assert "limits.cpu_seconds: must be a positive whole number" in problems
    assert "limits.disk: unknown limit" in problems


def test_a_module_may_only_lower_the_server_limits(tmp_path: Path) -> None:
    settings = load_settings(
        {"home": tmp_path, "task_memory_mb": 512, "task_processes": 0}, environ={}
    )
    own = parse_manifest(_metadata(limits={"memory_mb": 2048, "processes": 16, "output_mb": 5}))
    limits = sandbox.effective_limits(settings, own.limits)
    assert limits == {"memory_mb": 512, "cpu_seconds": 0, "output_mb": 5, "processes": 16}


def test_sandbox_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="sandbox"):
        load_settings({"home": tmp_path}, environ={"ORCHESTRA_SANDBOX": "sometimes"})
    with pytest.raises(InvalidInput, match="task_memory_mb"):
        load_settings({"home": tmp_path}, environ={"ORCHESTRA_TASK_MEMORY_MB": "-1"})


def test_off_means_no_sandbox_and_says_so() -> None:
    state = sandbox.detect("off")
    assert not state.active
    assert state.describe()["mode"] == "off"
    assert "ORCHESTRA_SANDBOX=off" in state.detail


def test_required_without_bubblewrap_refuses_to_serve(tmp_path: Path, uv_cache: Path) -> None:
    env = clean_environ()
    env.update(
        PATH=str(tmp_path / "empty"), ORCHESTRA_HOME=str(tmp_path / "home"),
        ORCHESTRA_SANDBOX="required", PYTHONPATH=str(ROOT / "src"),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "orchestra", "serve", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ORCHESTRA_SANDBOX=required, but bubblewrap (bwrap) is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_without_bubblewrap_says_in_one_line_how_to_get_it(
    tmp_path: Path, uv_cache: Path
) -> None:
    server = ServerProcess(tmp_path / "home", uv_cache)
    server.env["PATH"] = str(tmp_path / "empty")  # no bwrap to be found
    try:
        server.start()
        health = server.call("GET", "/health").json()
    finally:
        server.close()
    assert health["sandbox"]["active"] is False
    [line] = [line for line in server.log().splitlines() if "task sandbox:" in line]
    assert line.endswith(
        "task sandbox: OFF (bubblewrap (bwrap) is not installed): install the bubblewrap package"
        " (apt install bubblewrap; dnf install bubblewrap) and start again:"
        " see docs/operating.md#getting-the-sandbox"
    )
    assert sandbox.detect("off").hint == ""
    if STATE.active:
        assert STATE.hint == ""


# -- the probe --------------------------------------------------------------------------------


class _Listener:
    """A TCP port on loopback that answers "hello" to whoever connects."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Wake the accepting thread, let it end, then close the socket.

        Closed under a thread blocked in accept, the descriptor's number goes to the next
        socket this process opens, and the thread would accept that socket's connections.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"hello")


@pytest.fixture(scope="module", params=["cold", "warm"])
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, uv_cache: Path
) -> Iterator[tuple[ServerProcess, _Listener]]:
    """A real server with a token (in its own environment), and a port to reach; its tasks
    start cold, or warm wherever they can (every promise holds for both)."""
    warm = "1" if request.param == "warm" else "0"
    home = tmp_path_factory.mktemp("sandbox") / "home"
    server = ServerProcess(home, uv_cache, api_token=TOKEN, warm=warm)
    listener = _Listener()
    server.start()
    try:
        yield server, listener
    finally:
        server.close()
        listener.close()


def _call(server: ServerProcess, method: str, path: str, body: Any = None) -> Any:
    answer = http(
        method, server.url + path, json_body=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status < 300, (method, path, answer.status, answer.body)
    return answer.json()


def _register(server: ServerProcess, folder: Path) -> int:
    module_id = int(_call(server, "POST", "/modules", {"source": str(folder)})["id"])
    module = wait_for(
        lambda: _call(server, "GET", f"/module/{module_id}"),
        lambda m: m["status"] != "installing", timeout=180, what="the installation",
    )  # fmt: skip
    assert module["status"] == "installed", module.get("error")
    return module_id


def _probe(server: ServerProcess, module_id: int, port: int, other: Path) -> dict[str, str]:
    """The probe's report, from a warm start when the server starts tasks warm."""
    warm = server.env.get("ORCHESTRA_WARM") == "1"
    for _ in range(40):  # the first run is cold, and the warm interpreter starts after it
        report, start = _probe_once(server, module_id, port, other)
        if start == ("warm" if warm else "cold"):
            return report
    raise AssertionError(f"the probe never started {'warm' if warm else 'cold'}")


def _probe_once(
    server: ServerProcess, module_id: int, port: int, other: Path
) -> tuple[dict[str, str], str]:
    home = server.home
    args = {"port": port, "database": str(home / "orchestra.db"), "other_output": str(other),
            "server_pid": server.pid, "home": str(home)}  # fmt: skip
    task_id = _call(server, "POST", f"/module/{module_id}/run", args)["task"]
    task = _call(server, "GET", f"/task/{task_id}?wait=60")
    assert task["status"] == "done", task
    report = http("GET", f"{server.url}/task/{task_id}/output/report.json")
    assert report.status == 200
    return dict(report.json()), str(task["start"])


@pytest.mark.usefixtures("needs_sandbox")
def test_the_probe_can_do_nothing_it_should_not(guarded: tuple[ServerProcess, _Listener]) -> None:
    server, listener = guarded
    health = _call(server, "GET", "/health")["sandbox"]
    assert health["active"] is True and health["mode"] == "auto", health
    module_id = _register(server, PROBE)
    first = _probe(server, module_id, listener.port, server.home / "tasks" / "999" / "output")
    other = server.home / "tasks" / "1" / "output"
    report = _probe(server, module_id, listener.port, other)
    print(json.dumps(report, indent=1))
    for found in (first, report):
        allowed = {name: what for name, what in found.items() if not what.startswith("denied")}
        assert not allowed, allowed
    assert len(report) == 7, report
    assert not (other / "planted.txt").exists()
    assert not list((server.home / "installs").glob("*/code/Model/planted.py"))
    # the server really has the token in its environment: the probe just cannot see it
    assert TOKEN in Path(f"/proc/{server.pid}/environ").read_text(errors="replace")


@pytest.mark.usefixtures("needs_sandbox")
def test_a_module_that_declares_network_can_connect(
    guarded: tuple[ServerProcess, _Listener], tmp_path: Path
) -> None:
    server, listener = guarded
    online = tmp_path / "online"
    shutil.copytree(PROBE, online)
    metadata = json.loads((online / "metadata.json").read_text())
    (online / "metadata.json").write_text(
        json.dumps({**metadata, "name": "Probe online", "network": True})
    )
    module_id = _register(server, online)
    report = _probe(server, module_id, listener.port, tmp_path)
    assert report["connect"] == "allowed: hello", report
    assert report["read_database"].startswith("denied"), report
