"""What workers fetch and send through the API: locks, module packages, outputs, log chunks."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra import __version__
from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service
from orchestra.storage.files import TaskFolder
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import NewTask
from orchestra.tasks.status import Outcome, TaskStatus
from tests.support.paths import DATA

if TYPE_CHECKING:
    from flask.testing import FlaskClient

TOKEN = "admin-token"  # the servers' own (ORCHESTRA_API_TOKEN): admin, not worker
AUTH: dict[str, str] = {}  # a worker token's header, made afresh by each test's fixture


@pytest.fixture
def guarded(settings: Settings) -> Iterator[tuple[Service, FlaskClient]]:
    """A service with a token, the sleeps module registered, and a client of its API."""
    service = Service(settings.with_overrides(api_token=TOKEN))
    try:
        service.register(str(DATA / "modules" / "sleeps"))
        AUTH["Authorization"] = f"Bearer {service.create_token('w', role='worker').token}"
        yield service, create_app(service=service).test_client()
    finally:
        service.close()


def _running_task(service: Service) -> int:
    """A task row moved to running with no process behind it: as a worker's claim leaves it."""
    row, _ = lifecycle.create(service.db, NewTask(1, {}, 60.0, None, lambda task_id: {}))
    claimed = lifecycle.claim(service.db, row.id, "worker-1")
    assert claimed is not None and claimed.id == row.id
    return row.id


def _put(client: FlaskClient, task_id: int, name: str, data: bytes, digest: str | None = None):
    headers = {**AUTH, "X-Orchestra-Sha256": digest or hashlib.sha256(data).hexdigest()}
    return client.put(f"/task/{task_id}/output/{name}", data=data, headers=headers)


def test_registration_records_the_exact_versions_installed(settings: Settings, tmp_path: Path):
    module = tmp_path / "needs-six"
    (module / "m").mkdir(parents=True)
    (module / "m" / "__init__.py").write_text("")
    (module / "metadata.json").write_text(
        json.dumps({
            "name": "needs six", "description": "d", "args": [], "output": {"type": "image"},
            "install": {"executable": "m", "files": ["m"], "requirements": ["six>=1.10"]},
        })
    )  # fmt: skip
    service = Service(settings)
    try:
        info = service.register(str(module))
        assert info.lock is not None and info.lock["python"] == info.python_version
        assert len(info.lock["packages"]) == 1 and info.lock["packages"][0].startswith("six==")
        client = create_app(service=service).test_client()
        assert client.get(f"/module/{info.id}").get_json()["lock"] == info.lock
    finally:
        service.close()


def test_a_package_holds_the_code_metadata_and_lock_with_its_checksum(guarded):
    service, client = guarded
    generation = service.registry.runnable(1)[1].root.name
    assert client.get(f"/module/1/package/{generation}").status_code == 401
    answer = client.get(f"/module/1/package/{generation}", headers=AUTH)
    assert answer.status_code == 200
    assert answer.headers["X-Orchestra-Sha256"] == hashlib.sha256(answer.data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(answer.data)) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("package.json"))
    assert "code/Model/main.py" in names
    assert manifest["metadata"]["name"] == "Sleeps"
    assert manifest["lock"] == [] and manifest["generation"] == generation
    assert client.get(f"/modules/1/package/{generation}", headers=AUTH).data == answer.data


@pytest.mark.parametrize("generation", ["0" * 32, "..", "not-hex", "a" * 300])
def test_an_unknown_generation_is_not_found(guarded, generation: str):
    _, client = guarded
    answer = client.get(f"/module/1/package/{generation}", headers=AUTH)
    assert answer.status_code == 404
    assert "error" in answer.get_json()


def test_an_uploaded_output_is_stored_where_downloads_find_it(guarded):
    service, client = guarded
    task_id = _running_task(service)
    data = b"2020-01-01T00:00:00 2020-01-01T01:00:00\n" * 1000
    assert _put(client, task_id, "sub/cat.txt", data).status_code == 201
    again = _put(client, task_id, "sub/cat.txt", data)  # a retry replaces it whole
    assert again.status_code == 201 and again.get_json()["size"] == len(data)
    stored = TaskFolder(service.settings.tasks_dir, task_id).output / "sub" / "cat.txt"
    assert stored.read_bytes() == data


@pytest.mark.parametrize("name", ["../escape.txt", "a/../../x", "./x", "a//b", "..%2Fx"])
def test_an_upload_that_would_leave_the_output_folder_is_refused(guarded, name: str):
    service, client = guarded
    task_id = _running_task(service)
    answer = _put(client, task_id, name, b"x")
    assert answer.status_code in (400, 404)
    folder = TaskFolder(service.settings.tasks_dir, task_id)
    assert not (folder.root / "escape.txt").exists()
    assert not (service.settings.tasks_dir / "x").exists()


def test_an_upload_with_a_wrong_checksum_stores_nothing(guarded):
    service, client = guarded
    task_id = _running_task(service)
    answer = _put(client, task_id, "out.txt", b"payload", digest="0" * 64)
    assert answer.status_code == 400 and "checksum" in answer.get_json()["error"]
    folder = TaskFolder(service.settings.tasks_dir, task_id)
    assert list(folder.output.iterdir()) == []
    assert [p.name for p in folder.root.iterdir()] == ["output"]  # no partial file left


def test_uploads_need_the_token_and_a_running_task(guarded):
    service, client = guarded
    task_id = _running_task(service)
    plain = client.put(f"/task/{task_id}/output/x", data=b"x")
    assert plain.status_code == 401
    lifecycle.finish(service.db, task_id, Outcome(TaskStatus.ERROR, None, "lost"))
    assert _put(client, task_id, "x", b"x").status_code == 409


def test_log_chunks_append_once_even_when_sent_again(guarded):
    service, client = guarded
    task_id = _running_task(service)

    def send(offset: int, data: bytes):
        return client.post(f"/task/{task_id}/log/stdout?offset={offset}", data=data, headers=AUTH)

    assert send(0, b"line 1\n").get_json() == {"size": 7}
    assert send(0, b"line 1\n").get_json() == {"size": 7}  # a retry after a lost answer
    assert send(0, b"line 1\nline 2\n").get_json() == {"size": 14}
    assert send(20, b"gap").status_code == 409
    assert (
        client.post(f"/task/{task_id}/log/other?offset=0", data=b"x", headers=AUTH).status_code
        == 404
    )
    log = client.get(f"/task/{task_id}/log").get_json()
    assert log["stdout"] == "line 1\nline 2\n" and log["stderr"] == ""


def test_files_from_another_worker_than_the_tasks_are_refused(guarded):
    service, client = guarded
    task_id = _running_task(service)  # claimed by worker-1
    headers = {**AUTH, "X-Orchestra-Worker": "worker-2"}
    log = client.post(f"/task/{task_id}/log/stdout?offset=0", data=b"x", headers=headers)
    assert log.status_code == 409 and "worker-1" in log.get_json()["error"]
    digest = hashlib.sha256(b"x").hexdigest()
    put = client.put(
        f"/task/{task_id}/output/x", data=b"x", headers={**headers, "X-Orchestra-Sha256": digest}
    )
    assert put.status_code == 409
    assert not (TaskFolder(service.settings.tasks_dir, task_id).output / "x").exists()


def test_a_starting_worker_learns_whether_its_token_is_good_and_where_tasks_run(
    guarded: tuple[Service, FlaskClient],
) -> None:
    _service, client = guarded
    assert client.get("/worker/check").status_code == 401
    assert client.get("/worker/check", headers={"Authorization": "Bearer nope"}).status_code == 401
    admin = client.get("/worker/check", headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.status_code == 403 and "needs the role worker" in admin.get_json()["error"]
    for path in ("/worker/check", "/workers/check"):
        answer = client.get(path, headers=AUTH)
        assert answer.status_code == 200
        assert answer.get_json() == {"version": __version__, "executor": "local"}
