"""Bad requests get a JSON error naming the problem, with the right status; never HTML."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from werkzeug.datastructures import MultiDict

from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service

if TYPE_CHECKING:
    from flask.testing import FlaskClient


@pytest.fixture
def small_client(settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app whose bodies may be 2 KiB at most."""
    service = Service(settings.with_overrides(max_upload=2048))
    try:
        yield create_app(service=service).test_client()
    finally:
        service.close()


@pytest.mark.parametrize("path", ["/modules", "/module/1/run", "/modules/1/run"])
def test_malformed_json_is_a_400_naming_the_problem(client: FlaskClient, path: str) -> None:
    answer = client.post(path, data='{"source": ', content_type="application/json")
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json["error"]


@pytest.mark.parametrize("path", ["/modules", "/module/1/run"])
def test_deeply_nested_json_is_a_400_not_a_crash(client: FlaskClient, path: str) -> None:
    answer = client.post(path, data="[" * 200_000, content_type="application/json")
    assert answer.status_code == 400
    assert "nested too deeply" in answer.json["error"]


def test_a_body_that_is_not_utf8_is_a_400(client: FlaskClient) -> None:
    answer = client.post("/modules", data=b'{"source": "\xff"}', content_type="application/json")
    assert answer.status_code == 400
    assert "UTF-8" in answer.json["error"]


@pytest.mark.parametrize("path", ["/modules", "/module/1/run"])
def test_an_unsupported_content_type_is_a_400_naming_it(client: FlaskClient, path: str) -> None:
    answer = client.post(path, data="source=x", content_type="text/plain")
    assert answer.status_code == 400
    assert "text/plain" in answer.json["error"]


def test_a_registration_must_be_a_json_object_with_known_fields(client: FlaskClient) -> None:
    assert client.post("/modules", json=["x"]).status_code == 400
    missing = client.post("/modules", json={"ref": "main"})
    assert missing.status_code == 400 and "source" in missing.json["error"]
    unknown = client.post("/modules", json={"source": "/x", "branch": "main"})
    assert unknown.status_code == 400 and "'branch'" in unknown.json["error"]
    typed = client.post("/modules", json={"source": 5})
    assert typed.status_code == 400 and typed.json["key"] == "source"
    assert client.post("/modules").status_code == 400
    assert client.get("/modules").json == []  # nothing was registered


def test_a_nul_byte_in_a_source_or_an_argument_is_a_400(client: FlaskClient) -> None:
    source = client.post("/modules", json={"source": "/tmp/a\u0000b"})
    assert source.status_code == 400 and "NUL" in source.json["error"]
    query = client.post("/module/1/run?start=2020%00")
    assert query.status_code == 400 and "NUL" in query.json["error"]
    name = client.post("/module/1/run", json={"st\u0000art": "1"})
    assert name.status_code == 400 and "NUL" in name.json["error"]


def test_an_argument_given_twice_is_a_400_naming_both_places(client: FlaskClient) -> None:
    twice = client.post("/module/1/run?start=1", json={"start": "2"})
    assert twice.status_code == 400
    assert twice.json["error"] == (
        "argument 'start' given more than once (in the query string and the JSON body)"
    )
    repeated = client.get("/module/1/run?stop=1&stop=2")
    assert repeated.status_code == 400 and repeated.json["key"] == "stop"


@pytest.mark.parametrize("path", ["/modules", "/module/1/run"])
def test_a_multipart_part_without_a_name_is_a_400(client: FlaskClient, path: str) -> None:
    body = b"--XX\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--XX--\r\n"
    answer = client.post(path, data=body, content_type="multipart/form-data; boundary=XX")
    assert answer.status_code == 400
    assert answer.json["error"] == "a form field has no name"


def test_a_registration_field_given_twice_is_a_400(client: FlaskClient) -> None:
    answer = client.post("/modules", data=MultiDict([("source", "/a"), ("source", "/b")]))
    assert answer.status_code == 400 and "more than once" in answer.json["error"]


def test_run_arguments_must_be_a_json_object(client: FlaskClient) -> None:
    answer = client.post("/module/1/run", json=[1, 2])
    assert answer.status_code == 400
    assert "must be a JSON object" in answer.json["error"]


def test_a_body_over_the_upload_limit_is_a_413(small_client: FlaskClient) -> None:
    big = '{"source": "' + "x" * 4096 + '"}'
    answer = small_client.post("/modules", data=big, content_type="application/json")
    assert answer.status_code == 413 and answer.is_json
    upload = small_client.post(
        "/modules",
        data={"file": (io.BytesIO(b"z" * 4096), "m.zip")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 413 and upload.is_json


@pytest.mark.usefixtures("database")  # the filters reach the database: both kinds
@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("status=finished", "status"),
        ("module=abc", "module"),
        ("module=-3", "module"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=99999999999999999999999", "offset"),
    ],
)
def test_bad_task_list_parameters_are_400s_naming_them(
    client: FlaskClient, query: str, key: str
) -> None:
    answer = client.get(f"/tasks?{query}")
    assert answer.status_code == 400
    assert answer.json["key"] == key


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "inf", "1e999"])
def test_a_bad_wait_is_a_400(client: FlaskClient, wait: str) -> None:
    answer = client.get(f"/task/1?wait={wait}")
    assert answer.status_code == 400 and answer.json["key"] == "wait"


def test_a_bad_force_flag_is_a_400(client: FlaskClient) -> None:
    answer = client.delete("/module/1?force=maybe")
    assert answer.status_code == 400 and answer.json["key"] == "force"


def test_an_unexpected_error_is_logged_and_answered_as_json_500(
    service: Service, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra.access import rules

    app = create_app(service=service)
    monkeypatch.setitem(rules.RULES, "broken", rules.READ)

    def broken() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/broken", view_func=broken)
    with caplog.at_level(logging.ERROR, logger="orchestra.edge.errors"):
        answer = app.test_client().get("/broken")
    assert answer.status_code == 500
    assert answer.json == {"error": "internal server error"}
    assert "a bug" in caplog.text
