"""Warm starts, in the real sandbox: isolated, fresh, killed whole, or cold."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.config import Settings, load_settings
from orchestra.executors import sandbox
from orchestra.service import Service
from tests.support.helpers import http, wait_for, write_module
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from tests.support.server import LiveServer

STATE = sandbox.detect("auto")
pytestmark = pytest.mark.skipif(not STATE.active, reason=f"no sandbox here: {STATE.detail}")
FINAL = {"done", "error", "killed"}

# a module-level counter, changed by every task: each task must find it at its installed value
COUNTER = """
import json, os, tinymod
tinymod.COUNT += 1
seen = {"count": tinymod.COUNT, "tmp": sorted(os.listdir("/tmp")), "pid": os.getpid(),
        "uid": os.getuid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
        "tasks": sorted(os.listdir(out.parent.parent))}
open("/tmp/mine-" + args.get("tag", "x"), "w").write("secret")
time.sleep(float(args.get("seconds", "0")))
seen["tmp_after"] = sorted(os.listdir("/tmp"))
(out / "seen.json").write_text(json.dumps(seen))
"""


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path) -> Settings:
    """Warm starts on, the server's limits set (they must hold for warm tasks too)."""
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "max_running": 4, "warm": True,
         "warm_idle_seconds": 600, "task_memory_mb": 512, "task_processes": 64},
        environ={},
    )  # fmt: skip


def _counter_folder(folder: Path) -> Path:
    write_module(folder, name=folder.name, code=COUNTER,
                 args=["start", ["tag", "str"], ["seconds", "float"]])  # fmt: skip
    (folder / "tinymod" / "__init__.py").write_text("COUNT = 0\n")
    return folder


def _counter(service: Service, folder: Path) -> int:
    return service.register(str(_counter_folder(folder))).id


def _final(server: LiveServer, task_id: int) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: http("GET", f"{server.url}/task/{task_id}?wait=5").json(),
            lambda t: t["status"] in FINAL,
            timeout=120,
            what="task",
        )  # fmt: skip
    )


def _start(server: LiveServer, module_id: int, **args: Any) -> int:
    answer = http("POST", f"{server.url}/module/{module_id}/run", json_body=args)
    assert answer.status == 202, answer.body
    return int(answer.json()["task"])


def _run(server: LiveServer, module_id: int, **args: Any) -> dict[str, Any]:
    return _final(server, _start(server, module_id, **args))


def _until_warm(server: LiveServer, module_id: int, tag: str | None = "w") -> dict[str, Any]:
    """Run tasks until one starts warm (the first runs cold and learns the imports)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        task = _run(server, module_id, **({} if tag is None else {"tag": tag}))
        assert task["status"] == "done", task
        if task["start"] == "warm":
            return task
        time.sleep(0.2)
    raise AssertionError("no task started warm")


def _warmed(server: LiveServer, service: Service, folder: Path) -> int:
    """The counter module, registered and run until its tasks start warm."""
    module = _counter(service, folder)
    _run(server, module, tag="a")
    _until_warm(server, module)
    return module


def _a_spare_ready(metrics: str) -> bool:
    found = re.search(r'^orchestra_warm_spares\{state="ready"\} (\S+)$', metrics, re.MULTILINE)
    return found is not None and float(found.group(1)) >= 1


def _seen(settings: Settings, task: dict[str, Any]) -> dict[str, Any]:
    return dict(
        json.loads((settings.tasks_dir / str(task["id"]) / "output" / "seen.json").read_text())
    )


def test_a_warm_task_starts_from_the_installed_state_in_its_own_folders(
    live_server: LiveServer, service: Service, settings: Settings, tmp_path: Path
) -> None:
    module = _counter(service, tmp_path / "counter")
    first = _run(live_server, module, tag="a")
    assert first["status"] == "done" and first["start"] == "cold", first
    warm = _until_warm(live_server, module)
    again = _until_warm(live_server, module, tag="b")  # the next spare, once it is ready
    # and one more is kept ready behind it, which /metrics counts
    wait_for(lambda: http("GET", f"{live_server.url}/metrics").body.decode(),
             _a_spare_ready, timeout=30, what="a ready spare in /metrics")  # fmt: skip
    # what the first run imported, submodules included, never the module's own package
    (learnt,) = (settings.home / "warm").glob("*/*.txt")
    names = learnt.read_text().split()
    assert {"json", "json.decoder", "argparse"} <= set(names), names
    assert not [n for n in names if n.partition(".")[0] == "tinymod"]
    cold_tmp = _seen(settings, first)["tmp"]
    for task in (first, warm, again):
        seen = _seen(settings, task)
        assert seen["count"] == 1  # the counter at its installed value in every task
        assert seen["tmp"] == cold_tmp  # a fresh /tmp: nothing of an earlier task's
        assert not any(name.startswith("mine-") for name in seen["tmp"])
        assert seen["tasks"] == [str(task["id"])]  # no other task's folder
        assert seen["argv"][0] == str(settings.tasks_dir / str(task["id"]) / "output")
        assert seen["cwd"].endswith("/code")


def test_two_warm_tasks_at_once_see_neither_each_other_s_files_nor_tmp(
    live_server: LiveServer, service: Service, settings: Settings, tmp_path: Path
) -> None:
    module = _warmed(live_server, service, tmp_path / "pair")
    for _ in range(10):  # one spare is kept at first; a second once two were asked for at once
        ids = [_start(live_server, module, tag=tag, seconds=1.5) for tag in ("left", "right")]
        tasks = [_final(live_server, task_id) for task_id in ids]
        if [t["start"] for t in tasks] == ["warm", "warm"]:
            break
        time.sleep(1.5)
    assert [t["start"] for t in tasks] == ["warm", "warm"], tasks
    for task, tag in zip(tasks, ("left", "right"), strict=True):
        seen = _seen(settings, task)
        assert [n for n in seen["tmp_after"] if n.startswith("mine-")] == [f"mine-{tag}"]
        assert seen["tasks"] == [str(task["id"])]
        assert seen["count"] == 1


SPAWNER = """
import subprocess
marker = args["marker"]
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker],
                 start_new_session=True)
time.sleep(600)
"""


def _running_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_killing_a_warm_task_ends_its_whole_tree(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    folder = write_module(tmp_path / "spawner", name="spawner", code=SPAWNER,
                          args=["start", ["marker", "str"]])  # fmt: skip
    module = service.register(str(folder)).id
    for attempt in range(20):
        marker = f"orchestra-warm-marker-{attempt}-{time.time_ns()}"
        task_id = _start(live_server, module, marker=marker)
        wait_for(lambda m=marker: _running_with(m), bool, timeout=30, what="the grandchild")  # type: ignore[misc]
        running = http("GET", f"{live_server.url}/task/{task_id}").json()
        http("POST", f"{live_server.url}/task/{task_id}/kill")
        task = _final(live_server, task_id)
        assert task["status"] == "killed", task
        # the server that launched it says how it started while it runs, as its end does
        assert running["status"] == "running" and running["start"] == task["start"], running
        wait_for(lambda m=marker: _running_with(m), lambda left: not left, timeout=15,
                 what="the task's detached grandchild")  # type: ignore[misc]  # fmt: skip
        if task["start"] == "warm":
            return
    raise AssertionError("no task started warm")


def test_an_update_is_run_by_the_next_task_and_stops_the_old_interpreter(
    live_server: LiveServer, service: Service, settings: Settings, tmp_path: Path
) -> None:
    module = _warmed(live_server, service, tmp_path / "updated")
    (generation,) = [p.name for p in settings.installs_dir.iterdir() if (p / "env").is_dir()]
    (tmp_path / "updated" / "tinymod" / "__init__.py").write_text("COUNT = 41\n")
    service.update(module)
    task = _run(live_server, module, tag="b")
    assert task["status"] == "done" and _seen(settings, task)["count"] == 42
    wait_for(lambda: _running_with(str(generation)), lambda left: not left, timeout=15,
             what="the old generation's spare interpreter")  # fmt: skip
    again = _until_warm(live_server, module)
    assert _seen(settings, again)["count"] == 42


THREADER = (
    "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
)


# a process left running by an import: a double fork, so no child of the importer's
DAEMON = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(3600)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
)


@pytest.mark.parametrize("library", [THREADER, DAEMON], ids=["thread", "daemon"])
def test_a_library_starting_a_thread_or_process_at_import_starts_warm_and_ends(
    live_server: LiveServer, service: Service, tmp_path: Path, settings: Settings, library: str
) -> None:
    folder = write_module(tmp_path / "threads", name="threads",
                          code="import threader\n(out / 'ok.txt').write_text('ok')")  # fmt: skip
    module = service.register(str(folder)).id
    # a library of its environment that starts a thread when imported (PITFALLS 22)
    generation = next(p for p in settings.installs_dir.iterdir() if (p / "env").is_dir())
    site = next(generation.glob("env/lib/python*/site-packages"))
    (site / "threader.py").write_text(library)
    # a spare interpreter runs one task in its own process: nothing is forked after the
    # import, so a thread it started cannot hang the task, and what it left dies with it
    first = _run(live_server, module)
    assert first["status"] == "done" and first["start"] == "cold", first
    warm = _until_warm(live_server, module, tag=None)
    assert (settings.tasks_dir / str(warm["id"]) / "output" / "ok.txt").read_text() == "ok"


def test_more_modules_than_the_memory_budget_holds_are_each_answered_cold(
    service: Service, tmp_path: Path, uv_cache: Path
) -> None:
    small = load_settings(
        {"home": tmp_path / "small", "uv_cache": str(uv_cache), "warm": True,
         "warm_memory_mb": 1},
        environ={},
    )  # fmt: skip
    from tests.support.server import serve_in_thread

    tight = Service(small)
    try:
        with serve_in_thread(tight) as server:
            modules = [_counter(tight, tmp_path / f"m{i}") for i in range(3)]
            for module in modules:
                tasks = [_run(server, module, tag="x") for _ in range(4)]
                assert [t["status"] for t in tasks] == ["done"] * 4, tasks
                assert {t["start"] for t in tasks} == {"cold"}
    finally:
        tight.close()
    assert not _running_with(str(small.home / "installs"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_warm_task_outlives_its_server_and_is_adopted_by_the_next(
    tmp_path: Path, uv_cache: Path, signum: int
) -> None:
    server = ServerProcess(tmp_path / "home", uv_cache, warm="1")
    server.start()
    try:
        module = server.register(_counter_folder(tmp_path / "adopted"))
        for _ in range(40):
            if server.wait_final(server.run(module, tag="w"))["start"] == "warm":
                break
        wait_for(lambda: server.call("GET", "/metrics").body.decode(), _a_spare_ready,
                 timeout=30, what="the next spare")  # fmt: skip
        task_id = server.run(module, tag="long", seconds=4)
        # running, and started: its supervisor has written who runs it (a task claimed but not
        # yet started when its server dies is settled as never started, which is no adoption)
        identity = tmp_path / "home" / "tasks" / str(task_id) / "supervisor.json"
        wait_for(identity.exists, bool, timeout=30, what="the task's start")
        server.stop(signum)
        time.sleep(0.5)
        server.start()
        task = server.wait_final(task_id, timeout=60)
        assert task["status"] == "done" and task["start"] == "warm", (task, server.log())
        seen = json.loads(server.call("GET", f"/task/{task_id}/output/seen.json").body)
        assert seen["count"] == 1
    finally:
        server.close()


def _spares_of(installs: Path) -> list[int]:
    return _running_with(f"{installs}/")


def test_a_module_that_opts_out_always_starts_cold(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    folder = _counter_folder(tmp_path / "optout")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["install"]["warm"] = False
    (folder / "metadata.json").write_text(json.dumps(metadata))
    module = service.register(str(folder)).id
    tasks = [_run(live_server, module, tag="x") for _ in range(5)]
    assert [(t["status"], t["start"]) for t in tasks] == [("done", "cold")] * 5
    assert not _spares_of(service.settings.installs_dir)


def test_an_idle_warm_interpreter_is_stopped_and_started_again_when_needed(
    tmp_path: Path, uv_cache: Path
) -> None:
    from tests.support.server import serve_in_thread

    quick = load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "warm": True,
         "warm_idle_seconds": 1},
        environ={},
    )  # fmt: skip
    service = Service(quick)
    try:
        with serve_in_thread(service) as server:
            installs = quick.installs_dir
            module = _warmed(server, service, tmp_path / "idle")
            wait_for(lambda: _spares_of(installs), lambda left: not left, timeout=15,
                     what="the idle spare interpreter")  # fmt: skip
            _until_warm(server, module)  # started again when needed
            text = http("GET", f"{server.url}/metrics").body.decode()
            assert 'orchestra_task_starts{start="warm"}' in text
            assert 'orchestra_task_starts{start="warm"} 0.0' not in text
    finally:
        service.close()


def test_removing_a_module_stops_its_warm_interpreter(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    module = _warmed(live_server, service, tmp_path / "removed")
    installs = service.settings.installs_dir
    # The warm task used the spare; its successor is started in the background.
    wait_for(lambda: _spares_of(installs), bool, timeout=15,
             what="the module's next spare interpreter")  # fmt: skip
    assert http("DELETE", f"{live_server.url}/module/{module}?purge=1").status == 204
    wait_for(lambda: _spares_of(installs), lambda left: not left, timeout=10,
             what="the removed module's spare interpreter")  # fmt: skip
    learnt = service.settings.home / "warm"
    wait_for(lambda: list(learnt.glob("*")), lambda left: not left, timeout=10,
             what="what the removed module imported")  # fmt: skip
