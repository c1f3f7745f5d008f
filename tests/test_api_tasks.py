"""Running modules as tasks over the API: arguments, status, waiting, output, logs, kill."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.http import parse_options_header

from orchestra.service import Service
from tests.support.helpers import http, wait_for, wait_for_status, write_module
from tests.support.paths import EXAMPLES

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from tests.support.server import LiveServer

# every test here runs on SQLite and on PostgreSQL
pytestmark = pytest.mark.usefixtures("database")

FINAL = {"done", "error", "killed"}
CATALOG_ARGS = {"start": "2020-01-01T00:00:00", "stop": "2020-01-02T00:00:00"}

SLEEPER = """
print("started", flush=True)
time.sleep(float(args.get("seconds", "60")))
(out / "slept.txt").write_text(args.get("seconds", "60"))
"""
MANY = """
(out / "a.csv").write_text("x,y\\n1,2\\n")
(out / "sub").mkdir()
(out / "sub" / "b.txt").write_text("bee")
(out / "c.bin").write_bytes(bytes(range(256)) * 4096)
"""
ECHO = """
print("out:", sorted(args.items()), flush=True)
print("to stderr", file=sys.stderr, flush=True)
(out / "args.txt").write_text(repr(sorted(args.items())))
"""


@pytest.fixture
def catalog(service: Service) -> int:
    """The example catalog module, installed."""
    return service.register(str(EXAMPLES / "catalog")).id


def _module(service: Service, folder: Path, name: str, code: str, **meta: Any) -> int:
    return service.register(str(write_module(folder / name, name=name, code=code, **meta))).id


@pytest.fixture
def sleeper(service: Service, tmp_path: Path) -> int:
    """A module that sleeps ``seconds`` and then writes one file."""
    return _module(service, tmp_path, "sleeper", SLEEPER, args=[["seconds", "float"]])


def _download(client: FlaskClient, path: str) -> tuple[int, dict[str, str], bytes]:
    with client.get(path) as answer:  # closes the file the answer streams from
        return answer.status_code, dict(answer.headers), answer.get_data()


def _file_name(disposition: str) -> str:
    return str(parse_options_header(disposition)[1]["filename"])


def _final(client: FlaskClient, task_id: int) -> dict[str, Any]:
    return wait_for_status(lambda: client.get(f"/task/{task_id}?wait=5").json, FINAL)


def test_running_the_catalog_with_json_arguments_produces_its_catalog(
    client: FlaskClient, catalog: int
) -> None:
    answer = client.post(f"/module/{catalog}/run", json={**CATALOG_ARGS, "parameter": "Bx"})
    assert answer.status_code == 202
    assert answer.json["status"] in {"queued", "running"}
    task_id = answer.json["task"]
    assert answer.headers["Location"].endswith(f"/task/{task_id}")
    task = _final(client, task_id)
    assert task["status"] == "done", task["error"]
    assert task["args"]["parameter"] == "Bx"
    assert [f["name"] for f in task["output"]] == ["catalog.txt"]
    status, headers, data = _download(client, f"/task/{task_id}/output")
    assert status == 200
    assert _file_name(headers["Content-Disposition"]) == "catalog.txt"
    rows = [line.split() for line in data.decode().splitlines() if not line.startswith("#")]
    assert len(rows) >= 1 and all(row[2] == "Bx" for row in rows)
    assert _download(client, f"/tasks/{task_id}/output/catalog.txt")[2] == data


@pytest.mark.parametrize("form", ["query", "form", "json", "get"])
def test_arguments_come_from_the_query_form_fields_or_json(
    client: FlaskClient, catalog: int, form: str
) -> None:
    values = {"parameter": "By", "spacing_hours": "4"}
    if form == "query":
        answer = client.post(f"/module/{catalog}/run", query_string=values)
    elif form == "form":
        answer = client.post(f"/modules/{catalog}/run", data=values)
    elif form == "json":
        answer = client.post(f"/module/{catalog}/run", json={"parameter": "By", "spacing_hours": 4})
    else:
        answer = client.get(f"/modules/{catalog}/run", query_string=values)
    assert answer.status_code == 202, answer.json
    task = _final(client, answer.json["task"])
    assert task["status"] == "done", task["error"]
    assert task["args"]["parameter"] == "By" and task["args"]["spacing_hours"] == "4"


def test_arguments_from_the_query_and_the_body_are_merged(
    client: FlaskClient, catalog: int
) -> None:
    answer = client.post(f"/module/{catalog}/run?parameter=Bz", data={"min_score": "0.5"})
    task = _final(client, answer.json["task"])
    assert task["args"]["parameter"] == "Bz" and task["args"]["min_score"] == "0.5"


def test_unknown_arguments_and_wrong_types_are_400s_naming_them(
    client: FlaskClient, catalog: int
) -> None:
    unknown = client.post(f"/module/{catalog}/run", json={"colour": "red"})
    assert unknown.status_code == 400 and "colour" in unknown.json["error"]
    typed = client.post(f"/module/{catalog}/run", json={"spacing_hours": "soon"})
    assert typed.status_code == 400 and "spacing_hours" in typed.json["error"]
    assert client.get("/tasks").json["total"] == 0


def test_several_output_files_come_as_one_zip(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module_id = _module(service, tmp_path, "many", MANY)
    task = _final(client, client.post(f"/module/{module_id}/run").json["task"])
    assert task["status"] == "done", task["error"]
    status, headers, data = _download(client, f"/task/{task['id']}/output")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(archive.namelist()) == ["a.csv", "c.bin", "sub/b.txt"]
    assert archive.read("sub/b.txt") == b"bee"
    assert archive.read("c.bin") == bytes(range(256)) * 4096
    assert archive.getinfo("c.bin").compress_type == zipfile.ZIP_DEFLATED  # it compresses
    assert _download(client, f"/task/{task['id']}/output/sub/b.txt")[2] == b"bee"
    missing = client.get(f"/task/{task['id']}/output/../../../etc/passwd")
    assert missing.status_code == 404 and missing.is_json


def test_an_output_symlink_leaving_the_folder_is_never_served(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    code = """
    import os
    (out / "real.txt").write_text("ok")
    os.symlink("/etc/passwd", out / "link.txt")
    """
    module_id = _module(service, tmp_path, "linker", code)
    task = _final(client, client.post(f"/module/{module_id}/run").json["task"])
    assert client.get(f"/task/{task['id']}/output/link.txt").status_code == 404
    assert b"root:" not in _download(client, f"/task/{task['id']}/output")[2]


def test_wait_answers_as_soon_as_the_task_is_done(client: FlaskClient, sleeper: int) -> None:
    task_id = client.post(f"/module/{sleeper}/run", json={"seconds": 1}).json["task"]
    began = time.monotonic()
    task = client.get(f"/task/{task_id}?wait=30").json
    elapsed = time.monotonic() - began
    assert task["status"] == "done"
    assert elapsed < 10


def test_a_running_task_has_no_output_yet_and_cannot_be_deleted(
    client: FlaskClient, sleeper: int
) -> None:
    task_id = client.post(f"/module/{sleeper}/run").json["task"]
    wait_for_status(lambda: client.get(f"/task/{task_id}").json, {"running"})
    assert client.get(f"/task/{task_id}/output").status_code == 409
    assert client.get(f"/task/{task_id}/output/slept.txt").status_code == 409
    assert client.delete(f"/task/{task_id}").status_code == 409
    assert client.get(f"/task/{task_id}").json["status"] == "running"
    client.post(f"/task/{task_id}/kill")


def test_killing_a_task_answers_it_killed_and_a_second_kill_is_a_409(
    client: FlaskClient, sleeper: int
) -> None:
    task_id = client.post(f"/module/{sleeper}/run").json["task"]
    wait_for(
        lambda: client.get(f"/task/{task_id}/log").json["stdout"],
        lambda stdout: "started" in stdout,
        timeout=60,
        what="the task's first line",
    )
    killed = client.post(f"/task/{task_id}/kill")
    assert killed.status_code == 200
    assert killed.json["status"] == "killed"
    again = client.get(f"/tasks/{task_id}/kill")
    assert again.status_code == 409 and again.is_json


def test_a_finished_task_is_deleted_with_204(client: FlaskClient, catalog: int) -> None:
    task_id = client.post(f"/module/{catalog}/run").json["task"]
    _final(client, task_id)
    assert client.delete(f"/tasks/{task_id}").status_code == 204
    assert client.get(f"/task/{task_id}").status_code == 404


def test_the_log_holds_standard_output_and_standard_error(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module_id = _module(service, tmp_path, "echo", ECHO, args=["colour"])
    task_id = client.post(f"/module/{module_id}/run?colour=red").json["task"]
    _final(client, task_id)
    log = client.get(f"/task/{task_id}/log").json
    assert "('colour', 'red')" in log["stdout"]
    assert log["stderr"].strip() == "to stderr"
    assert client.get(f"/tasks/{task_id}/log").json == log


def test_deleting_a_module_with_a_running_task_needs_force(
    client: FlaskClient, sleeper: int
) -> None:
    task_id = client.post(f"/module/{sleeper}/run").json["task"]
    refused = client.delete(f"/module/{sleeper}")
    assert refused.status_code == 409 and "task" in refused.json["error"]
    assert client.delete(f"/module/{sleeper}?force=1").status_code == 204
    kept = client.get(f"/task/{task_id}").json  # killed, and kept with its removed module
    assert (kept["status"], kept["module_status"]) == ("killed", "removed")


def test_the_task_list_filters_and_pages_newest_first(
    client: FlaskClient, catalog: int, sleeper: int
) -> None:
    ids = [client.post(f"/module/{catalog}/run").json["task"] for _ in range(3)]
    for task_id in ids:
        _final(client, task_id)
    slow = client.post(f"/module/{sleeper}/run").json["task"]
    first = client.get("/tasks?limit=2").json
    assert [t["id"] for t in first["tasks"]] == [slow, ids[2]]
    assert first["total"] == 4 and first["limit"] == 2 and first["next_cursor"]
    rest = client.get(f"/tasks?limit=2&cursor={first['next_cursor']}").json
    assert [t["id"] for t in rest["tasks"]] == [ids[1], ids[0]]
    assert [t["id"] for t in client.get("/tasks?limit=2&offset=2").json["tasks"]] == ids[1::-1]
    done = client.get(f"/tasks?status=done&module={catalog}").json
    assert sorted(t["id"] for t in done["tasks"]) == ids
    assert [t["id"] for t in client.get(f"/tasks?module={sleeper}").json["tasks"]] == [slow]
    assert client.get("/tasks?limit=100000").json["limit"] == 500
    client.post(f"/task/{slow}/kill")


def test_a_real_server_runs_a_task_and_streams_its_output(
    live_server: LiveServer, service: Service, tmp_path: Path
) -> None:
    module_id = _module(service, tmp_path, "many", MANY)
    url = live_server.url
    run = http("POST", f"{url}/modules/{module_id}/run", json_body={})
    assert run.status == 202
    task = http("GET", f"{url}/tasks/{run.json()['task']}?wait=30").json()
    assert task["status"] == "done", task["error"]
    answer = http("GET", f"{url}/task/{task['id']}/output")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in answer.headers  # streamed while it is built
    archive = zipfile.ZipFile(io.BytesIO(answer.body))
    assert archive.read("c.bin") == bytes(range(256)) * 4096
    single = http("GET", f"{url}/task/{task['id']}/output/a.csv")
    assert single.body == b"x,y\n1,2\n"
    assert _file_name(single.headers["Content-Disposition"]) == "a.csv"


def test_a_real_server_kills_a_slow_task_from_the_old_get_form(
    live_server: LiveServer, sleeper: int
) -> None:
    url = live_server.url
    task_id = http("GET", f"{url}/module/{sleeper}/run?seconds=60").json()["task"]
    wait_for_status(lambda: http("GET", f"{url}/task/{task_id}").json(), {"running"})
    killed = http("GET", f"{url}/task/{task_id}/kill")
    assert killed.status == 200 and killed.json()["status"] == "killed"
    assert http("GET", f"{url}/task/{task_id}").json()["status"] == "killed"


@pytest.mark.parametrize(
    ("example", "args", "file", "first_row"),
    [
        ("catalog", {**CATALOG_ARGS, "parameter": "Bx"}, "catalog.txt",
         ["# Catalog generated by Orchestra;"]),
        ("timeseries", {"start": "2020-01-01T00:00:00", "stop": "2020-01-01T01:00:00"},
         "timeseries.csv", ["time", "value"]),
    ],
)  # fmt: skip
def test_each_example_registers_runs_and_downloads_through_a_real_server(
    live_server: LiveServer, example: str, args: dict[str, str], file: str, first_row: list[str]
) -> None:
    url = live_server.url
    accepted = http("POST", f"{url}/modules", json_body={"source": str(EXAMPLES / example)})
    assert accepted.status == 202
    module_id = accepted.json()["id"]
    module = wait_for_status(
        lambda: http("GET", f"{url}/module/{module_id}").json(), {"installed", "error"}, timeout=300
    )
    assert module["status"] == "installed", module.get("error")
    run = http("POST", f"{url}/module/{module_id}/run", json_body=args)
    assert run.status == 202
    task = http("GET", f"{url}/task/{run.json()['task']}?wait=60").json()
    assert task["status"] == "done", task["error"]
    answer = http("GET", f"{url}/task/{task['id']}/output")
    assert answer.status == 200
    assert _file_name(answer.headers["Content-Disposition"]) == file
    rows = list(csv.reader(io.StringIO(answer.body.decode())))
    assert rows[0] == first_row and len(rows) > 1
    assert task["output"] == [{"name": file, "size": len(answer.body)}]
