"""Fair share: the next task to start is the oldest of the submitter with the
fewest running, so one client's long queue holds back another's task by one task's end;
quotas on queued tasks answer 429."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestra.access.caller import Caller, acting_as
from orchestra.access.roles import Role
from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.errors import TooManyRequests
from orchestra.service import Service
from orchestra.storage.db import Database
from orchestra.tasks import lifecycle
from tests.support.helpers import wait_for, write_module

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def one_slot(settings: Settings, tmp_path: Path) -> Iterator[tuple[Service, int]]:
    """A started service running one task at a time, with a module that sleeps a little."""
    service = Service(settings.with_overrides(max_running=1))
    folder = write_module(tmp_path / "nap", name="nap", code="time.sleep(0.4)")
    module_id = service.register(str(folder)).id
    service.start()
    try:
        yield service, module_id
    finally:
        service.close()


def _run_as(service: Service, module_id: int, name: str, user: str | None = None) -> int:
    with acting_as(Caller(name, Role.RUN, user)):
        return service.run(module_id, {}).id


def _order_of_starts(service: Service, ids: list[int]) -> list[int]:
    tasks = [wait_for(lambda i=i: service.get_task(i, wait=5), lambda t: t.status == "done",
                      timeout=120, what=f"task {i}") for i in ids]  # fmt: skip
    return [t.id for t in sorted(tasks, key=lambda t: t.started)]


@pytest.mark.parametrize(
    ("many", "lone"),
    [(("front", None), ("batch", None)), (("front", "alice"), ("front", "bob"))],
    ids=["two-tokens", "two-users-of-one-token"],
)
def test_a_lone_task_starts_within_one_task_of_a_long_queue(
    one_slot: tuple[Service, int], many: tuple[str, str | None], lone: tuple[str, str | None]
) -> None:
    service, module_id = one_slot
    queue = [_run_as(service, module_id, *many) for _ in range(6)]
    single = _run_as(service, module_id, *lone)
    order = _order_of_starts(service, [*queue, single])
    # the first of the long queue was running when the lone task came: it starts next
    assert order.index(single) == 1, order
    record = service.get_task(single)
    assert (record.submitted_by, record.user) == lone


def _queue_row(db: Database, module_id: int, name: str) -> int:
    new = lifecycle.NewTask(module_id, {}, 60.0, None, lambda _id: {}, submitted_by=name)
    return lifecycle.create(db, new)[0].id


def test_ties_go_to_the_submitter_whose_last_task_started_longest_ago(
    settings: Settings, tmp_path: Path
) -> None:
    """Picked in the database alone: equal running counts, the older last start wins."""
    service = Service(settings.with_overrides(max_running=1))
    folder = write_module(tmp_path / "nap", name="nap", code="pass")
    module_id = service.register(str(folder)).id
    db: Database = service.db
    try:
        a1, b1 = _queue_row(db, module_id, "a"), _queue_row(db, module_id, "b")
        first = lifecycle.claim_next(db, 10, "here")  # a1: the oldest, nobody ran yet
        second = lifecycle.claim_next(db, 10, "here")  # b1: b has none running, a has one
        assert (first and first.id, second and second.id) == (a1, b1)
        a2, b2 = _queue_row(db, module_id, "a"), _queue_row(db, module_id, "b")
        # each runs one; a's last start is the older: a2 first (b2 is no younger)
        third = lifecycle.claim_next(db, 10, "here")
        assert third is not None and third.id == a2 and b2 > a2
        c1 = _queue_row(db, module_id, "c")
        # c runs nothing: its task goes before b2, older though b2 is
        fourth = lifecycle.claim_next(db, 10, "here")
        assert fourth is not None and fourth.id == c1
    finally:
        service.close()


@contextmanager
def one_slot_taken(settings: Settings, tmp_path: Path) -> Iterator[tuple[Service, int]]:
    """A service whose one slot a long task holds: every task submitted now stays queued."""
    service = Service(settings.with_overrides(max_running=1, max_queued_per_submitter=2))
    blocker = write_module(tmp_path / "blocker", name="blocker", code="time.sleep(120)")
    running = service.run(service.register(str(blocker)).id, {})
    assert running.status == "running"
    folder = write_module(tmp_path / "nap", name="nap", code="pass")
    try:
        yield service, service.register(str(folder)).id
    finally:
        service.kill(running.id)
        service.close()


def test_a_submitter_over_its_quota_is_answered_429_with_retry_after(
    settings: Settings, tmp_path: Path
) -> None:
    with one_slot_taken(settings, tmp_path) as (service, module_id):
        for _ in range(2):
            _run_as(service, module_id, "front", "alice")
        with pytest.raises(TooManyRequests, match="ORCHESTRA_MAX_QUEUED_PER_SUBMITTER=2"):
            _run_as(service, module_id, "front", "alice")
        _run_as(service, module_id, "front", "bob")  # another submitter has its own quota
        client = create_app(service=service).test_client()
        headers = {"X-Orchestra-User": "alice"}
        answer = client.post(f"/module/{module_id}/run", headers=headers)
        assert answer.status_code == 202  # the API's caller is another submitter: anonymous
        client.post(f"/module/{module_id}/run", headers=headers)
        refused = client.post(f"/module/{module_id}/run", headers=headers)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "anonymous/alice" in refused.json["error"]
        assert service.list_tasks(user="alice").total == 4
        assert service.list_tasks(submitted_by="front").total == 3


def test_metrics_give_the_queue_depth_per_submitter(settings: Settings, tmp_path: Path) -> None:
    with one_slot_taken(settings, tmp_path) as (service, module_id):
        for _ in range(2):
            _run_as(service, module_id, "front", "alice")
        _run_as(service, module_id, "batch")
        text = create_app(service=service).test_client().get("/metrics").get_data(as_text=True)
        assert 'orchestra_queue_depth_by_submitter{submitted_by="front",user="alice"} 2.0' in text
        assert 'orchestra_queue_depth_by_submitter{submitted_by="batch",user=""} 1.0' in text


def test_the_command_line_records_who_submitted_locally_and_through_a_server(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.support.helpers import run_cli
    from tests.support.server import serve_in_thread

    folder = write_module(tmp_path / "nap", name="nap", code="pass")
    assert run_cli(["register", str(folder)], settings)[0] == 0
    code, out, err = run_cli(["--json", "run", "1", "--user", "alice", "--wait"], settings)
    assert code == 0, err
    assert '"submitted_by": "local"' in out and '"user": "alice"' in out
    service = Service(settings.with_overrides(api_token="boot"))
    front = service.create_token("front", role="run").token
    with serve_in_thread(service) as live:
        remote = Settings(home=tmp_path / "laptop", url=live.url, api_token=front)
        code, out, err = run_cli(["run", "1", "--user", "bob", "--wait"], remote)
        assert code == 0, err
        assert "submitter: front (bob)" in out
        code, out, _ = run_cli(["tasks", "--submitted-by", "front", "--for-user", "bob"], remote)
        assert code == 0 and "front (bob)" in out and "local" not in out
        code, out, _ = run_cli(["--json", "tasks", "--for-user", "alice"], remote)
        assert code == 0 and '"total": 1' in out
    service.close()
