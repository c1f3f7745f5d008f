"""Answers reused: a deterministic module's earlier answer to the same request."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.errors import InvalidMetadata
from orchestra.service import Service
from orchestra.tasks.reuse import reuse_key
from tests.support.helpers import wait_for_status, write_module

if TYPE_CHECKING:
    from flask.testing import FlaskClient

# every test here runs on SQLite and on PostgreSQL
pytestmark = pytest.mark.usefixtures("database")

FINAL = {"done", "error", "killed"}
# a different answer every run (a random token), so a reused answer is told from a new one
ANSWER = """
import os
(out / "answer.txt").write_text(os.urandom(8).hex() + " " + repr(sorted(args.items())))
(out / "sub").mkdir()
(out / "sub" / "more.bin").write_bytes(bytes(range(256)) * 64)
"""


def _register(service: Service, folder: Path, *, deterministic: bool = True) -> int:
    write_module(
        folder, name=folder.name, code=ANSWER, args=["start", ["n", "int"]],
        defaults={"n": 1}, extra={"deterministic": deterministic},
    )  # fmt: skip
    return service.register(str(folder)).id


@pytest.fixture
def module(service: Service, tmp_path: Path) -> int:
    """A deterministic module whose every run writes a new random answer."""
    return _register(service, tmp_path / "answers")


def _run(client: FlaskClient, module_id: int, **kwargs: Any) -> dict[str, Any]:
    answer = client.post(f"/module/{module_id}/run", **kwargs)
    assert answer.status_code == 202, answer.json
    task_id = answer.json["task"]
    return wait_for_status(lambda: client.get(f"/task/{task_id}?wait=5").json, FINAL)


def _answer(client: FlaskClient, task: dict[str, Any]) -> bytes:
    with client.get(f"/task/{task['id']}/output/answer.txt") as response:
        assert response.status_code == 200
        return response.get_data()


def test_the_same_arguments_are_answered_at_once_from_the_earlier_task(
    client: FlaskClient, module: int, settings: Any
) -> None:
    first = _run(client, module, json={"start": "2020"})
    assert first["status"] == "done" and first["reused_from"] is None
    answer = client.post(f"/module/{module}/run", json={"start": "2020", "n": 1})
    assert answer.status_code == 202
    assert answer.json["status"] == "done"  # no wait: done in the answer to the request
    second = client.get(f"/task/{answer.json['task']}").json
    assert second["reused_from"] == first["id"]
    assert second["args"] == first["args"] == {"start": "2020", "n": "1"}
    assert second["output"] == first["output"]
    assert _answer(client, second) == _answer(client, first)
    # shared, not copied: the same file on disk under both tasks
    tasks = settings.tasks_dir
    for name in ("answer.txt", "sub/more.bin"):
        mine = tasks / str(second["id"]) / "output" / name
        theirs = tasks / str(first["id"]) / "output" / name
        assert mine.stat().st_ino == theirs.stat().st_ino


@pytest.mark.parametrize(
    "other",
    [
        {"json": {"start": "2021"}},
        {"json": {"start": "2020", "n": 2}},
        {"json": {"start": "2020", "fresh": True}},
        {"query_string": {"start": "2020", "fresh": "1"}},
        {"data": {"start": "2020", "fresh": "true"}},
    ],
    ids=["other-start", "other-n", "fresh-json", "fresh-query", "fresh-form"],
)
def test_other_arguments_or_fresh_run_anew(
    client: FlaskClient, module: int, other: dict[str, Any]
) -> None:
    first = _run(client, module, json={"start": "2020"})
    again = _run(client, module, **other)
    assert again["status"] == "done" and again["reused_from"] is None
    assert _answer(client, again) != _answer(client, first)
    assert "fresh" not in again["args"]  # a request option, never passed to the module
    assert "fresh" not in _answer(client, again).decode()


def test_a_fresh_answer_is_the_one_reused_next(client: FlaskClient, module: int) -> None:
    _run(client, module, json={"start": "2020"})
    fresh = _run(client, module, json={"start": "2020", "fresh": "yes"})
    reused = _run(client, module, json={"start": "2020", "fresh": False})
    assert reused["reused_from"] == fresh["id"]


def test_a_bad_fresh_is_refused_naming_it(client: FlaskClient, module: int) -> None:
    answer = client.post(f"/module/{module}/run", json={"start": "2020", "fresh": "maybe"})
    assert answer.status_code == 400
    assert "fresh" in answer.json["error"]


def test_another_generation_runs_anew(
    client: FlaskClient, service: Service, module: int, tmp_path: Path
) -> None:
    first = _run(client, module, json={"start": "2020"})
    service.update(module)
    again = _run(client, module, json={"start": "2020"})
    assert again["reused_from"] is None
    assert _answer(client, again) != _answer(client, first)
    assert _run(client, module, json={"start": "2020"})["reused_from"] == again["id"]


def test_a_module_not_declared_deterministic_always_runs(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module = _register(service, tmp_path / "plain", deterministic=False)
    first = _run(client, module, json={"start": "2020"})
    again = _run(client, module, json={"start": "2020"})
    assert again["reused_from"] is None
    assert _answer(client, again) != _answer(client, first)


@pytest.mark.parametrize("deleted", ["earlier", "reused"])
def test_deleting_either_task_leaves_the_other_s_outputs_whole(
    client: FlaskClient, module: int, deleted: str
) -> None:
    first = _run(client, module, json={"start": "2020"})
    expected = _answer(client, first)
    second = _run(client, module, json={"start": "2020"})
    assert second["reused_from"] == first["id"]
    gone, kept = (first, second) if deleted == "earlier" else (second, first)
    assert client.delete(f"/task/{gone['id']}").status_code == 204
    assert _answer(client, kept) == expected
    with client.get(f"/task/{kept['id']}/output/sub/more.bin") as response:
        assert response.get_data() == bytes(range(256)) * 64
    # the one kept answers the next request in its turn
    assert _run(client, module, json={"start": "2020"})["reused_from"] == kept["id"]


def test_an_answer_whose_files_are_gone_is_not_reused(
    client: FlaskClient, module: int, settings: Any
) -> None:
    first = _run(client, module, json={"start": "2020"})
    (settings.tasks_dir / str(first["id"]) / "output" / "answer.txt").unlink()
    again = _run(client, module, json={"start": "2020"})
    assert again["reused_from"] is None
    shutil.rmtree(settings.tasks_dir / str(again["id"]) / "output" / "sub")
    assert _run(client, module, json={"start": "2020"})["reused_from"] is None


def test_the_key_depends_on_generation_arguments_and_model_version() -> None:
    base = reuse_key("g1", {"a": "1", "b": "2"})
    assert base == reuse_key("g1", {"b": "2", "a": "1"})  # the order given does not matter
    assert base != reuse_key("g2", {"a": "1", "b": "2"})
    assert base != reuse_key("g1", {"a": "1", "b": "3"})
    assert base != reuse_key("g1", {"a": "1", "b": "2"}, "sha256:" + "0" * 64)
    assert len(base) == 64


@pytest.mark.parametrize("name", ["fresh", "model", "base", "promote"])
def test_a_module_declaring_a_request_option_as_argument_is_refused(
    service: Service, tmp_path: Path, name: str
) -> None:
    folder = write_module(tmp_path / "clash", name="clash", code="pass", args=["start", name])
    with pytest.raises(InvalidMetadata, match=name):
        service.register(str(folder))
    assert service.list_modules() == []


def test_deterministic_must_be_a_boolean(service: Service, tmp_path: Path) -> None:
    folder = write_module(tmp_path / "bad", name="bad", code="pass", extra={"deterministic": "yes"})
    with pytest.raises(InvalidMetadata, match="deterministic"):
        service.register(str(folder))
    assert service.list_modules() == []


def test_records_and_metrics_say_how_each_task_started(client: FlaskClient, module: int) -> None:
    first = _run(client, module, json={"start": "2020"})
    second = _run(client, module, json={"start": "2020"})
    third = _run(client, module, json={"start": "2021"})
    assert (first["start"], second["start"], third["start"]) == ("cold", None, "cold")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'orchestra_task_starts{start="cold"} 2.0' in text
    assert 'orchestra_task_starts{start="warm"} 0.0' in text
    assert 'orchestra_task_starts{start="reused"} 1.0' in text


def test_another_model_version_runs_anew(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    import json

    from tests.support.paths import EXAMPLES

    folder = tmp_path / "trainable"
    shutil.copytree(EXAMPLES / "trainable", folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "deterministic": True}))
    module = service.register(str(folder)).id
    for epochs in (3, 5):  # versions 1 and 2
        trained = client.post(f"/module/{module}/train", json={"epochs": epochs})
        assert trained.status_code == 202, trained.json
        done = wait_for_status(
            lambda t=trained.json["task"]: client.get(f"/task/{t}?wait=5").json, FINAL
        )
        assert done["status"] == "done", done
    first = _run(client, module, json={"model": 1})
    assert first["status"] == "done" and first["reused_from"] is None, first
    assert _run(client, module, json={"model": 1})["reused_from"] == first["id"]
    other = _run(client, module, json={"model": 2})
    assert other["status"] == "done" and other["reused_from"] is None, other
    assert _run(client, module, json={"model": "2"})["reused_from"] == other["id"]


def test_the_dashboard_shows_how_a_task_started_and_links_a_reused_answer(
    client: FlaskClient, module: int
) -> None:
    first = _run(client, module, json={"start": "2019"})
    second = _run(client, module, json={"start": "2019"})
    page = client.get(f"/ui/task/{first['id']}").get_data(as_text=True)
    assert "cold</span>" in page and "answered from" not in page
    page = client.get(f"/ui/task/{second['id']}").get_data(as_text=True)
    assert f'href="/ui/task/{first["id"]}">task #{first["id"]}</a>' in page
