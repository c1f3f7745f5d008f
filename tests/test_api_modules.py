"""Registering, listing, showing and removing modules over the API, with real installs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.service import Service
from tests.support.helpers import http, wait_for, wait_for_status, write_module, zipped
from tests.support.paths import EXAMPLES

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from tests.support.server import LiveServer

# every test here runs on SQLite and on PostgreSQL
pytestmark = pytest.mark.usefixtures("database")

SUMMARY_KEYS = {"id", "name", "description", "version", "status", "output_type", "staged"}


@pytest.fixture(autouse=True)
def _finish_installs(service: Service) -> Any:
    """Background installs end before the service closes."""
    yield
    service.registry.join_background(timeout=120)


def _installed(client: FlaskClient, module_id: int) -> dict[str, Any]:
    return wait_for_status(lambda: client.get(f"/module/{module_id}").json, {"installed", "error"})


def test_registering_the_example_catalog_installs_it_in_the_background(
    client: FlaskClient,
) -> None:
    answer = client.post("/modules", json={"source": str(EXAMPLES / "catalog")})
    assert answer.status_code == 202
    module_id = answer.json["id"]
    assert answer.json["status"] == "installing"
    assert answer.headers["Location"].endswith(f"/module/{module_id}")
    module = _installed(client, module_id)
    assert module["status"] == "installed", module.get("error")
    assert module["name"] == "Example catalog"
    assert module["args"] == ["start", "stop", ["parameter", "str"]]
    assert module["install"]["executable"] == "Model"
    assert module["python_version"] and module["created"]
    assert module["source"].endswith("catalog")
    assert client.get(f"/modules/{module_id}").json == module


def test_the_module_list_is_a_list_of_short_records(client: FlaskClient) -> None:
    module_id = client.post("/modules", json={"source": str(EXAMPLES / "catalog")}).json["id"]
    _installed(client, module_id)
    listing = client.get("/modules").json
    assert isinstance(listing, list) and len(listing) == 1
    assert set(listing[0]) == SUMMARY_KEYS
    assert listing[0] == {
        "id": module_id,
        "name": "Example catalog",
        "description": listing[0]["description"],
        "version": "1.0.0",
        "status": "installed",
        "output_type": "catalog",
        "staged": False,
    }


def test_a_source_folder_that_does_not_exist_is_a_400_and_records_nothing(
    client: FlaskClient, tmp_path: Path
) -> None:
    answer = client.post("/modules", json={"source": str(tmp_path / "missing")})
    assert answer.status_code == 400
    assert "source folder not found" in answer.json["error"] and "missing" in answer.json["error"]
    assert client.get("/modules").json == []


def test_a_source_that_fails_later_ends_in_error_with_the_reason(
    client: FlaskClient, tmp_path: Path
) -> None:
    folder = write_module(tmp_path / "m", name="broken", code="pass")
    shutil.rmtree(folder / "tinymod")  # metadata lists files that are not there
    answer = client.post("/modules", json={"source": str(folder)})
    assert answer.status_code == 202
    module = _installed(client, answer.json["id"])
    assert module["status"] == "error"
    assert module["error"] == "install.files: 'tinymod' not found in the module folder"


def test_an_uploaded_zip_is_installed_and_the_client_file_name_is_never_used(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    folder = write_module(
        tmp_path / "zipped", name="zipped", code="(out / 'z.txt').write_text('z')"
    )
    answer = client.post(
        "/modules",
        data={"file": (io.BytesIO(zipped(folder)), "../../escape.zip")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.json
    module = _installed(client, answer.json["id"])
    assert module["status"] == "installed", module.get("error")
    assert module["name"] == "zipped"
    assert not list(service.settings.home.parent.rglob("escape.zip"))
    # removed once the install has ended (just after the status shows it)
    wait_for(lambda: list(service.settings.uploads_dir.glob("*")), lambda left: not left,
             timeout=30, what="uploads left")  # fmt: skip


def test_an_upload_with_a_source_too_is_a_400(client: FlaskClient) -> None:
    answer = client.post(
        "/modules",
        data={"file": (io.BytesIO(b"PK"), "m.zip"), "source": "/x"},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 400 and "not both" in answer.json["error"]


def test_deleting_a_module_answers_204_and_forgets_it(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    info = service.register(str(write_module(tmp_path / "m", name="gone", code="pass")))
    answer = client.delete(f"/module/{info.id}")
    assert answer.status_code == 204 and answer.data == b""
    assert client.get(f"/module/{info.id}").status_code == 404
    assert client.delete(f"/modules/{info.id}").status_code == 404
    assert client.get("/modules").json == []


def test_a_real_server_registers_and_lists_a_module(live_server: LiveServer) -> None:
    answer = http(
        "POST", live_server.url + "/modules", json_body={"source": str(EXAMPLES / "catalog")}
    )
    assert answer.status == 202
    module_id = answer.json()["id"]
    module = wait_for_status(
        lambda: http("GET", f"{live_server.url}/modules/{module_id}").json(), {"installed", "error"}
    )
    assert module["status"] == "installed", module.get("error")
    assert [m["id"] for m in http("GET", live_server.url + "/modules").json()] == [module_id]
