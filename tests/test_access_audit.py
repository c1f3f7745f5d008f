"""The audit log: each kind of change leaves one entry, written with the change; a failed
change its failure; a change refused for its role, the refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service
from tests.support.helpers import run_cli, wait_for, write_module

if TYPE_CHECKING:
    from flask.testing import FlaskClient

BOOT = "boot-token"


class Callers:
    """A test client of the API, and a token per role of interest."""

    def __init__(self, client: FlaskClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def ask(self, who: str, method: str, path: str, **options: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.client.open(path, method=method, headers=headers, **options)

    def entries(self, **query: str) -> list[dict[str, Any]]:
        answer = self.ask("boot", "GET", "/audit", query_string=query)
        assert answer.status_code == 200, answer.json
        return list(answer.json["entries"])


@pytest.fixture
def callers(settings: Settings, tmp_path: Path) -> Iterator[Callers]:
    """The API with its one task slot held by a long task (tasks stay queued), and tokens
    ops, front, viewer."""
    service = Service(settings.with_overrides(api_token=BOOT, max_running=1))
    blocker = write_module(tmp_path / "blocker", name="blocker", code="time.sleep(120)")
    running = service.run(service.register(str(blocker)).id, {})
    tokens = {"boot": BOOT}
    for name, role in (("ops", "operate"), ("front", "run"), ("viewer", "read")):
        tokens[name] = service.create_token(name, role=role).token
    try:
        yield Callers(create_app(service=service).test_client(), tokens)
    finally:
        service.registry.join_background(timeout=120)
        service.kill(running.id)
        service.close()


def _last(callers: Callers) -> tuple[str, str, str, str]:
    entry = callers.entries(limit="1")[0]
    return entry["who"], entry["action"], entry["object"], entry["outcome"]


def _installed(callers: Callers, module_id: int) -> dict[str, Any]:
    return dict(wait_for(lambda: callers.ask("ops", "GET", f"/module/{module_id}").json,
                         lambda m: m["status"] != "installing", timeout=120,
                         what="the installation"))  # fmt: skip


def test_each_kind_of_change_leaves_its_entry(callers: Callers, tmp_path: Path) -> None:
    made = [(e["who"], e["action"], e["outcome"]) for e in callers.entries()]
    # made by the fixture, in-process: the blocking module, then the tokens
    assert made == [("local", "token.create", "ok")] * 3 + [("local", "module.register", "ok")]
    folder = write_module(tmp_path / "m", name="audited", code="pass")
    module_id = callers.ask("ops", "POST", "/modules", json={"source": str(folder)}).json["id"]
    assert _installed(callers, module_id)["status"] == "installed"
    assert _last(callers) == ("ops", "module.register", f"module {module_id}", "ok")
    callers.ask("ops", "POST", f"/module/{module_id}/stage")
    assert _last(callers)[:2] == ("ops", "module.stage")
    callers.ask("ops", "POST", f"/module/{module_id}/publish")
    assert _last(callers)[:2] == ("ops", "module.publish")
    assert callers.ask("ops", "POST", f"/module/{module_id}/update").status_code == 202
    wait_for(lambda: _last(callers), lambda e: e[1] == "module.update", timeout=120,
             what="the update's entry")  # fmt: skip
    assert _last(callers) == ("ops", "module.update", f"module {module_id}", "ok")

    task = callers.ask("front", "POST", f"/module/{module_id}/run").json["task"]
    own = callers.ask("front", "POST", f"/module/{module_id}/run").json["task"]
    callers.ask("front", "POST", f"/task/{own}/kill")  # its own: not audited
    assert _last(callers)[1] == "module.update"
    callers.ask("ops", "POST", f"/task/{task}/kill")
    assert _last(callers) == ("ops", "task.kill", f"task {task}", "ok")
    callers.ask("ops", "DELETE", f"/task/{task}")
    assert _last(callers) == ("ops", "task.delete", f"task {task}", "ok")
    callers.ask("ops", "POST", "/tasks/prune", query_string={"older_than": "0.00000001"})
    assert _last(callers)[:2] == ("ops", "tasks.prune")
    callers.ask("ops", "DELETE", f"/module/{module_id}")
    assert _last(callers) == ("ops", "module.remove", f"module {module_id}", "ok")
    callers.ask("boot", "DELETE", "/token/viewer")
    assert _last(callers) == ("bootstrap", "token.revoke", "token viewer", "ok")


def test_failed_and_refused_changes_are_left_in_it(callers: Callers, tmp_path: Path) -> None:
    answer = callers.ask("ops", "POST", "/modules", json={"source": str(tmp_path / "none")})
    assert answer.status_code == 400
    who, action, _, outcome = _last(callers)
    assert (who, action, outcome) == ("ops", "module.register", "failed")
    assert callers.ask("ops", "DELETE", "/module/999").status_code == 404
    assert _last(callers) == ("ops", "module.remove", "module 999", "failed")
    assert callers.ask("viewer", "POST", "/tasks/prune").status_code == 403
    entry = callers.entries(limit="1")[0]
    assert (entry["who"], entry["outcome"], entry["object"]) == (
        "viewer",
        "refused",
        "POST /tasks/prune",
    )
    assert "needs operate" in entry["detail"]
    # a run token may kill only its own tasks: another's is refused, and that is recorded
    folder = write_module(tmp_path / "m", name="theirs", code="pass")
    module_id = callers.ask("ops", "POST", "/modules", json={"source": str(folder)}).json["id"]
    _installed(callers, module_id)
    theirs = callers.ask("ops", "POST", f"/module/{module_id}/run").json["task"]
    refused = callers.ask("front", "POST", f"/task/{theirs}/kill")
    assert refused.status_code == 403 and "operate" in refused.json["error"]
    assert _last(callers) == ("front", "task.kill", f"task {theirs}", "refused")
    assert callers.ask("viewer", "GET", "/audit").status_code == 403  # admins only


def test_the_log_is_filtered_paged_and_shown_by_the_command_line(
    callers: Callers, settings: Settings
) -> None:
    for name in ("a", "b", "c"):
        callers.ask("boot", "POST", "/tokens", json={"name": name, "role": "read"})
    assert [e["object"] for e in callers.entries(action="token.create", limit="2")] == [
        "token c", "token b"
    ]  # fmt: skip
    first = callers.ask("boot", "GET", "/audit", query_string={"limit": "2"}).json
    following = {"limit": "2", "cursor": first["next_cursor"]}
    more = callers.ask("boot", "GET", "/audit", query_string=following).json
    ids = [e["id"] for e in first["entries"] + more["entries"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4
    assert callers.entries(who="nobody") == []
    assert callers.entries(since="2999-01-01T00:00:00Z") == []
    bad = callers.ask("boot", "GET", "/audit", query_string={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json["error"]
    code, out, err = run_cli(["audit", "--action", "token.create"], settings)
    assert code == 0, err
    assert "bootstrap" in out and "token c" in out and "token.create" in out
