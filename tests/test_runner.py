"""Tasks through the service: real modules in real environments, run by real supervisors."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from orchestra.config import Settings
from orchestra.errors import InvalidInput, NotFound, WrongState
from orchestra.records import TaskInfo
from orchestra.service import Service
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import NewTask
from orchestra.tasks.status import TaskStatus
from orchestra.tasks.watching import LAUNCH_WINDOW
from tests.support.helpers import wait_for
from tests.support.paths import DATA
from tests.support.processes import alive, host_pid, naming, wait_for_file

MODULES = DATA / "modules"


@pytest.fixture
def server(service: Service) -> Iterator[Service]:
    """The service with its task runner started, as ``orchestra serve`` runs it."""
    service.start()
    yield service


def _register(service: Service, name: str) -> int:
    return service.register(str(MODULES / name)).id


def _run_to_end(service: Service, module_id: int, args: dict[str, Any]) -> TaskInfo:
    task = service.run(module_id, args)
    info = service.get_task(task.id, wait=30)
    assert info.status in {"done", "error", "killed"}, info
    return info


def _output(service: Service, task_id: int, name: str) -> Any:
    return json.loads(service.task_output_file(task_id, name).read_text())


def _task_rows(service: Service) -> int:
    with service.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(TaskRow)) or 0)


def test_a_task_runs_to_done_with_its_output(server: Service) -> None:
    module = _register(server, "echo")
    info = _run_to_end(server, module, {"text": "hello", "count": 3, "start": "2020-01-01"})
    assert info.status == "done", info.error
    assert info.exit_code == 0
    assert [f.name for f in info.output or ()] == ["args.json"]
    seen = _output(server, info.id, "args.json")
    assert seen["args"] == {
        "--start": "2020-01-01", "--text": "hello", "--count": "3", "--scale": "1.5",
    }  # fmt: skip
    assert seen["task_id"] == str(info.id)
    assert seen["cwd"].endswith("/code")
    assert seen["executable"].startswith(seen["virtual_env"])
    assert "PYTHONDONTWRITEBYTECODE" not in seen["env_keys"]
    assert not [
        k for k in seen["env_keys"] if k.startswith("ORCHESTRA_") and k != "ORCHESTRA_TASK_ID"
    ]
    assert server.task_log(info.id)["stdout"] == "echo done\n"


def test_without_a_server_the_task_still_runs_and_is_settled_by_whoever_looks(
    service: Service,
) -> None:
    module = _register(service, "echo")
    task = service.run(module, {"text": "x"})
    assert task.status == "running"
    assert service.get_task(task.id, wait=30).status == "done"


def test_shell_metacharacters_reach_the_module_unchanged(server: Service, tmp_path: Path) -> None:
    module = _register(server, "echo")
    nasty = f"$(touch {tmp_path}/x); rm -rf / `id` | cat > /tmp/y && echo '\"; \\n"
    info = _run_to_end(server, module, {"text": nasty})
    assert _output(server, info.id, "args.json")["args"]["--text"] == nasty
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args", [{"count": "three"}, {"unknown": "1"}, {"scale": "wide"}, {"text": ["a", "b"]}]
)
def test_wrong_arguments_create_no_task(service: Service, args: dict[str, Any]) -> None:
    module = _register(service, "echo")
    with pytest.raises(InvalidInput):
        service.run(module, args)
    assert _task_rows(service) == 0


def test_a_module_with_two_declared_outputs_lists_exactly_those(server: Service) -> None:
    module = _register(server, "outputs")
    info = _run_to_end(server, module, {})
    assert info.status == "done", info.error
    assert [(f.name, f.size) for f in info.output or ()] == [("a.csv", 8), ("b.txt", 4)]
    assert [name for name, _ in server.task_outputs(info.id)] == ["a.csv", "b.txt"]
    with pytest.raises(NotFound):
        server.task_output_file(info.id, "scratch.tmp")
    with pytest.raises(NotFound):
        server.task_output_file(info.id, "../result.json")


def test_a_missing_declared_output_is_an_error_naming_it(server: Service) -> None:
    module = _register(server, "outputs")
    info = _run_to_end(server, module, {"skip": "b.txt"})
    assert info.status == "error"
    assert "b.txt" in (info.error or "") and "a.csv" not in (info.error or "")


def test_a_failing_module_is_an_error_with_the_tail_of_its_standard_error(
    server: Service,
) -> None:
    info = _run_to_end(server, _register(server, "fails"), {})
    assert info.status == "error"
    assert info.exit_code == 3
    error = info.error or ""
    assert "exited with status 3" in error
    assert error.rstrip().endswith("ValueError: the data parameter is unknown")
    assert "noise line 99" in error and "noise line 10\n" not in error
    with pytest.raises(WrongState):
        server.task_outputs(info.id)


def test_a_task_over_its_timeout_is_an_error_saying_so(server: Service) -> None:
    info = _run_to_end(server, _register(server, "timesout"), {})
    assert info.status == "error"
    assert info.error == "timed out after 1 s"


def test_killing_a_running_task_stops_its_whole_tree(server: Service) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 600, "tree": True})
    pid_file = server.settings.tasks_dir / str(task.id) / "output" / "pids.json"
    wait_for_file(pid_file)
    reported = json.loads(pid_file.read_text()).values()
    pids = [host_pid(pid, pid_file.parent) for pid in reported]  # the sandbox has its own
    assert len(alive(pids)) == 3
    info = server.kill(task.id)
    assert info.status == "killed"
    assert alive(pids) == []


def test_killing_a_queued_task_drops_it_without_ever_starting_it(server: Service) -> None:
    module = _register(server, "sleeps")
    busy = [server.run(module, {"seconds": 600}) for _ in range(2)]
    queued = server.run(module, {"seconds": 0})
    assert queued.status == "queued"
    assert server.kill(queued.id).status == "killed"
    for task in busy:
        server.kill(task.id)
    assert not (server.settings.tasks_dir / str(queued.id) / "result.json").exists()
    assert server.get_task(queued.id).started is None


def test_killing_a_finished_task_is_a_wrong_state(server: Service) -> None:
    info = _run_to_end(server, _register(server, "echo"), {})
    with pytest.raises(WrongState):
        server.kill(info.id)


def test_never_more_than_max_running_tasks_run_at_once(server: Service) -> None:
    module = _register(server, "sleeps")
    tasks = [server.run(module, {"seconds": 0.4}) for _ in range(6)]
    infos = [server.get_task(t.id, wait=60) for t in tasks]
    assert [i.status for i in infos] == ["done"] * 6
    spans = [_output(server, i.id, "times.json") for i in infos]
    for span in spans:  # at the moment each task began, at most two were running
        at_once = [s for s in spans if s["start"] <= span["start"] < s["end"]]
        assert len(at_once) <= 2
    assert [i.id for i in sorted(infos, key=lambda i: i.started or i.created)] == [
        t.id for t in tasks
    ]


def test_get_with_wait_answers_promptly_once_the_task_ends(server: Service) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 0.3})
    began = time.monotonic()
    info = server.get_task(task.id, wait=30)
    waited = time.monotonic() - began
    assert info.status == "done"
    assert waited < 0.3 + 0.5
    assert info.finished is not None


def test_get_with_wait_gives_up_after_the_time_asked(server: Service) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 600})
    began = time.monotonic()
    assert server.get_task(task.id, wait=0.3).status == "running"
    assert 0.25 < time.monotonic() - began < 2.0
    server.kill(task.id)


def test_unknown_and_impossible_task_ids_are_not_found(service: Service) -> None:
    for task_id in (1, 0, -5, 2**63, 10**30):
        with pytest.raises(NotFound):
            service.get_task(task_id)


def test_the_list_is_newest_first_filtered_and_paged_by_cursor(server: Service) -> None:
    module = _register(server, "echo")
    ids = [server.run(module, {"count": n}).id for n in range(5)]
    for task_id in ids:
        server.get_task(task_id, wait=30)
    first = server.list_tasks(limit=2)
    assert [t.id for t in first.tasks] == ids[::-1][:2]
    assert first.total == 5 and first.next_cursor
    second = server.list_tasks(limit=2, cursor=first.next_cursor)
    assert [t.id for t in second.tasks] == ids[::-1][2:4]
    assert server.list_tasks(status="done", module=module).total == 5
    assert server.list_tasks(status="queued").total == 0
    for bad in ({"status": "finished"}, {"limit": 0}, {"limit": 1001}, {"cursor": "zzz"}):
        with pytest.raises(InvalidInput):
            server.list_tasks(**bad)  # type: ignore[arg-type]


def test_a_deleted_task_is_gone_with_its_folder(server: Service) -> None:
    module = _register(server, "sleeps")
    running = server.run(module, {"seconds": 600})
    with pytest.raises(WrongState):
        server.delete_task(running.id)
    server.kill(running.id)
    server.delete_task(running.id)
    assert not (server.settings.tasks_dir / str(running.id)).exists()
    with pytest.raises(NotFound):
        server.get_task(running.id)


def test_removing_a_module_kills_its_tasks_and_forgets_them_when_purged(server: Service) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 600})
    with pytest.raises(WrongState):
        server.remove(module)
    server.remove(module, force=True)
    assert server.get_task(task.id).status == "killed"  # kept, with its removed module
    server.remove(module, purge=True)
    assert _task_rows(server) == 0
    assert not (server.settings.tasks_dir / str(task.id)).exists()


def test_a_restarted_service_adopts_running_tasks_and_sees_them_finish(
    settings: Settings,
) -> None:
    first = Service(settings)
    first.start()
    module = _register(first, "sleeps")
    task = first.run(module, {"seconds": 1.0})
    first.close()
    second = Service(settings)
    second.start()
    try:
        assert second.get_task(task.id).status == "running"
        assert second.get_task(task.id, wait=30).status == "done"
    finally:
        second.close()


SERVER_SCRIPT = """
import sys
from orchestra.config import load_settings
from orchestra.service import Service
service = Service(load_settings({"home": sys.argv[1], "uv_cache": sys.argv[2]}, environ={}))
service.start()
print(service.run(int(sys.argv[3]), {"seconds": sys.argv[4]}).id, flush=True)
sys.stdin.read()
"""


def _doomed_server(settings: Settings, module: int, seconds: float) -> int:
    """Run a task from a server process, SIGKILL that server, return the task id."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER_SCRIPT), str(settings.home),
         str(settings.uv_cache_dir), str(module), str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    task_id = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()
    return task_id


@pytest.mark.slow
def test_tasks_survive_a_server_killed_with_sigkill(settings: Settings) -> None:
    with contextlib.closing(Service(settings)) as setup:
        module = _register(setup, "sleeps")
    task_id = _doomed_server(settings, module, 1.0)
    after = Service(settings)
    after.start()
    try:
        info = after.get_task(task_id, wait=30)
        assert info.status == "done", info.error
        assert _output(after, task_id, "times.json")["end"] > 0
    finally:
        after.close()


def test_a_task_whose_supervisor_died_is_an_error_with_the_reason(server: Service) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 600})
    supervisor_file = server.settings.tasks_dir / str(task.id) / "supervisor.json"
    wait_for_file(supervisor_file)
    recorded = json.loads(supervisor_file.read_text())
    os.kill(recorded["pid"], 9)
    info = server.get_task(task.id, wait=10)
    assert info.status == "error"
    assert "supervisor died" in (info.error or "")
    assert alive([recorded["module_pid"]]) == []  # nothing of the task runs on
    output = server.settings.tasks_dir / str(task.id) / "output"  # in its sandbox included
    wait_for(lambda: naming(output), lambda left: not left, timeout=10, what="its processes")


@pytest.mark.slow
def test_two_hundred_concurrent_run_requests_all_get_answers_and_run_once(
    server: Service,
) -> None:
    module = _register(server, "echo")
    answers: list[TaskInfo] = []
    failures: list[BaseException] = []

    def submit(number: int) -> None:
        try:
            answers.append(server.run(module, {"count": number}))
        except BaseException as exc:  # collected: every request must get an answer
            failures.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == [] and len(answers) == 200
    finals = [server.get_task(a.id, wait=60) for a in answers]
    deadline = time.monotonic() + 240
    while any(f.status not in {"done", "error", "killed"} for f in finals):
        assert time.monotonic() < deadline, "tasks still running"
        finals = [server.get_task(a.id, wait=5) for a in answers]
    assert {f.status for f in finals} == {"done"}
    for final in finals:
        assert server.task_log(final.id)["stdout"] == "echo done\n"  # ran exactly once
    counts = sorted(int(_output(server, f.id, "args.json")["args"]["--count"]) for f in finals)
    assert counts == list(range(200))


def _row(service: Service, task_id: int) -> TaskRow:
    row = lifecycle.read(service.db, task_id)
    assert row is not None
    return row


def test_a_running_task_keeps_its_supervisor_in_its_folder_and_is_adopted_from_there(
    settings: Settings,
) -> None:
    first = Service(settings)
    first.start()
    module = _register(first, "fails")
    sleeper = _register(first, "sleeps")
    task = first.run(sleeper, {"seconds": 1.0})
    wait_for_file(settings.tasks_dir / str(task.id) / "supervisor.json")
    assert _row(first, task.id).handle is None  # no write between claim and end
    failing = first.run(module, {})
    first.close()
    second = Service(settings)
    second.start()
    try:
        assert second.get_task(task.id, wait=30).status == "done"
        ended = second.get_task(failing.id, wait=30)
        assert (ended.status, ended.exit_code) == ("error", 3)  # its real exit status
    finally:
        second.close()


def test_a_kill_from_another_process_finds_the_supervisor_through_the_folder(
    server: Service,
) -> None:
    module = _register(server, "sleeps")
    task = server.run(module, {"seconds": 600})
    other = Service(server.settings)  # as the command line would, while the server runs
    try:
        assert other.kill(task.id).status == "killed"
    finally:
        other.close()
    assert server.get_task(task.id, wait=10).status == "killed"


def test_a_kill_flagged_before_the_supervisor_could_be_found_is_carried_out_by_the_sweep(
    service: Service,
) -> None:
    module = _register(service, "sleeps")
    task = service.run(module, {"seconds": 600})  # no server: a detached supervisor
    wait_for_file(service.settings.tasks_dir / str(task.id) / "supervisor.json")
    assert lifecycle.request_kill(service.db, task.id) == TaskStatus.RUNNING  # flag only
    service.tasks.reconcile()  # what the sweep does every poll interval
    info = service.get_task(task.id, wait=15)
    assert info.status == "killed"


def test_a_claimed_task_whose_supervisor_never_appeared_fails_after_the_launch_window(
    service: Service,
) -> None:
    module = _register(service, "echo")
    # a claim whose launching process died before starting anything
    claimed = [
        lifecycle.create(
            service.db, NewTask(module, {}, 10, None, lambda i: {"task_id": i}), max_running=2
        )[0]
        for _ in range(2)
    ]  # fmt: skip
    assert [row.status for row in claimed] == ["running", "running"]
    stale, fresh = claimed
    long_ago = lifecycle.now() - LAUNCH_WINDOW - timedelta(seconds=1)
    with service.db.write() as session:
        session.execute(update(TaskRow).where(TaskRow.id == stale.id).values(started=long_ago))
    assert not service.tasks.settle(fresh.id)  # may still be starting: left alone
    assert service.tasks.settle(stale.id)
    info = service.get_task(stale.id)
    assert info.status == "error"
    assert info.error == "the task never started: its supervisor is gone"
    assert service.get_task(fresh.id).status == "running"


def test_waiting_on_tasks_that_have_ended_leaves_nothing_behind(server: Service) -> None:
    module = _register(server, "echo")
    tasks = [server.run(module, {}) for _ in range(3)]
    for task in tasks:
        assert server.get_task(task.id, wait=30).status == "done"
    for task in tasks:  # already final: answered at once, no waiting state kept
        assert server.get_task(task.id, wait=30).status == "done"
    assert server.tasks.waiters._events == {}
