"""The REST API of trainings and model versions, over real HTTP to a real server."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import pytest

from tests.support.helpers import http, wait_for, wait_for_status
from tests.support.paths import ROOT
from tests.support.server import LiveServer

EXAMPLE = ROOT / "examples" / "trainable"
pytestmark = pytest.mark.usefixtures("database")  # each test on SQLite and on PostgreSQL


def _register(server: LiveServer) -> int:
    return server.service.register(str(EXAMPLE)).id


def _train(server: LiveServer, module_id: int, body: dict[str, Any]) -> dict[str, Any]:
    answer = http("POST", f"{server.url}/module/{module_id}/train", json_body=body)
    assert answer.status == 202, answer.body
    task_id = answer.json()["task"]
    assert answer.headers["Location"].endswith(f"/task/{task_id}")
    return wait_for_status(
        lambda: http("GET", f"{server.url}/task/{task_id}?wait=30").json(), {"done", "error"}
    )


def test_train_list_download_and_run_through_the_api(live_server: LiveServer) -> None:
    url, module = live_server.url, _register(live_server)
    refused = http("POST", f"{url}/module/{module}/run", json_body={})
    assert refused.status == 409 and "train it first" in refused.json()["error"]
    task = _train(live_server, module, {"epochs": 3, "learning_rate": 0.2})
    assert (task["status"], task["kind"], task["trained"]) == ("done", "train", 1), task
    models = http("GET", f"{url}/modules/{module}/models").json()["models"]
    assert [m["version"] for m in models] == [1] and models[0]["aliases"] == ["default"]
    one = http("GET", f"{url}/module/{module}/model/1").json()
    assert one["digest"] == models[0]["digest"] and one["args"]["epochs"] == "3"
    download = http("GET", f"{url}/module/{module}/model/1/download")
    assert download.headers["X-Orchestra-Digest"] == one["digest"]
    archive = zipfile.ZipFile(io.BytesIO(download.body))
    lines = "".join(
        f"{hashlib.sha256(archive.read(n)).hexdigest()}  {n}\n" for n in sorted(archive.namelist())
    )
    assert "sha256:" + hashlib.sha256(lines.encode()).hexdigest() == one["digest"]
    assert json.loads(archive.read("metrics.json")) == one["metrics"]
    run = http("POST", f"{url}/module/{module}/run", json_body={"model": "@default"})
    assert run.status == 202
    ran = http("GET", f"{url}/task/{run.json()['task']}?wait=30").json()
    assert ran["model"] == {"version": 1, "digest": one["digest"]}


def test_aliases_move_remove_and_keep_their_history(live_server: LiveServer) -> None:
    url, module = live_server.url, _register(live_server)
    for epochs in (2, 3):
        _train(live_server, module, {"epochs": epochs})
    moved = http("PUT", f"{url}/module/{module}/alias/champion", json_body={"version": 2})
    assert moved.status == 200 and moved.json()["aliases"] == {"champion": 2, "default": 1}
    bad = http("PUT", f"{url}/module/{module}/alias/Champion!", json_body={"version": 2})
    assert bad.status == 400 and "alias" in bad.json()["error"]
    missing = http("PUT", f"{url}/module/{module}/alias/x", json_body={"version": 9})
    assert missing.status == 404
    aliased = http("DELETE", f"{url}/module/{module}/model/2")
    assert aliased.status == 409 and "champion" in aliased.json()["error"]
    removed = http("DELETE", f"{url}/module/{module}/alias/champion")
    assert removed.json()["aliases"] == {"default": 1}
    history = http("GET", f"{url}/module/{module}/aliases").json()["history"]
    assert [(h["alias"], h["from"], h["to"]) for h in history] == [
        ("default", None, 1), ("champion", None, 2), ("champion", 2, None)
    ]  # fmt: skip
    assert http("DELETE", f"{url}/module/{module}/model/2").status == 204
    assert http("GET", f"{url}/module/{module}/model/2").status == 404
    assert http("GET", f"{url}/module/{module}/model/abc").status == 404


def test_a_trainings_metrics_are_readable_while_it_runs(live_server: LiveServer) -> None:
    url, module = live_server.url, _register(live_server)
    body = {"epochs": 400, "step_seconds": 0.02}
    task_id = http("POST", f"{url}/module/{module}/train", json_body=body).json()["task"]
    partial = wait_for(
        lambda: http("GET", f"{url}/task/{task_id}/metrics").json(),
        lambda m: len(m["steps"]) >= 3,
        timeout=60,
        what="metrics",
    )
    assert partial["final"] is None and partial["status"] == "running"
    assert [s["step"] for s in partial["steps"][:3]] == [1, 2, 3]
    http("POST", f"{url}/task/{task_id}/kill")


def test_training_request_options_are_checked(live_server: LiveServer) -> None:
    url, module = live_server.url, _register(live_server)
    for body, word in (({"promote": "maybe"}, "promote"), ({"base": "@x"}, "base"),
                       ({"model": 1}, "model"), ({"epochs": 1.5}, "epochs")):  # fmt: skip
        answer = http("POST", f"{url}/module/{module}/train", json_body=body)
        assert answer.status == 400 and word in answer.json()["error"], answer.body
    assert http("GET", f"{url}/tasks").json()["total"] == 0


def test_metrics_count_trainings_by_outcome_and_versions_by_module(
    live_server: LiveServer,
) -> None:
    url, module = live_server.url, _register(live_server)
    _train(live_server, module, {"epochs": 2})
    _train(live_server, module, {"epochs": 2, "start": "2019-01-01T00:00:00", "stop": "2018"})
    text = http("GET", f"{url}/metrics").body.decode()
    assert 'orchestra_trainings{outcome="done"} 1.0' in text
    assert 'orchestra_trainings{outcome="error"} 1.0' in text
    assert f'orchestra_model_versions{{module="{module}"}} 1.0' in text


def test_the_version_list_follows_every_change_of_the_module(live_server: LiveServer) -> None:
    url, module = live_server.url, _register(live_server)

    def listed() -> list[tuple[int, list[str], bool]]:
        found = http("GET", f"{url}/module/{module}/models").json()["models"]
        return [(m["version"], m["aliases"], m["removed"]) for m in found]

    for epochs in (2, 3):
        _train(live_server, module, {"epochs": epochs})
    assert listed() == [(2, [], False), (1, ["default"], False)]
    http("PUT", f"{url}/module/{module}/alias/default", json_body={"version": 2})
    assert listed() == [(2, ["default"], False), (1, [], False)]
    assert http("DELETE", f"{url}/module/{module}/model/1").status == 204
    assert listed() == [(2, ["default"], False)]
    _train(live_server, module, {"epochs": 2})
    assert listed()[0] == (3, [], False)
    assert http("DELETE", f"{url}/module/{module}").status == 204
    assert [removed for _, _, removed in listed()] == [True, True]


def test_alias_moves_and_deletions_need_operate_and_are_audited(live_server: LiveServer) -> None:
    service, url, module = live_server.service, live_server.url, _register(live_server)
    for epochs in (2, 3):
        _train(live_server, module, {"epochs": epochs})
    runner = service.create_token("runner", role="run").token
    ops = service.create_token("ops", role="operate").token

    def as_(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    move = {"version": 2}
    refused = http("PUT", f"{url}/module/{module}/alias/default", json_body=move,
                   headers=as_(runner))  # fmt: skip
    assert refused.status == 403 and "operate" in refused.json()["error"]
    moved = http("PUT", f"{url}/module/{module}/alias/default", json_body=move, headers=as_(ops))
    assert moved.json()["history"][-1]["by"] == "ops"
    train = http("POST", f"{url}/module/{module}/train", json_body={"epochs": 2},
                 headers=as_(runner))  # fmt: skip
    assert train.status == 202
    assert http("DELETE", f"{url}/module/{module}/model/1", headers=as_(runner)).status == 403
    assert http("DELETE", f"{url}/module/{module}/model/1", headers=as_(ops)).status == 204
    entries = service.audit_log(who="ops").entries
    assert [(e.action, e.object, e.outcome) for e in entries][:2] == [
        ("model.delete", f"module {module}", "ok"), ("model.alias", f"module {module}", "ok")
    ]  # fmt: skip
    assert entries[1].detail == "default: 1 -> 2"
    assert http("GET", f"{url}/module/{module}/models", headers=as_(runner)).status == 200
