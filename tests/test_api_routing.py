"""Every id route answers JSON 404s for unknown and invalid ids, in both spellings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.helpers import http

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from tests.support.server import LiveServer

# the tests whose ids reach the database run on SQLite and PostgreSQL (the others never do)
on_both = pytest.mark.usefixtures("database")

ID_ROUTES = [
    ("GET", "/module/{id}"),
    ("DELETE", "/module/{id}"),
    ("GET", "/module/{id}/run"),
    ("POST", "/module/{id}/run"),
    ("GET", "/task/{id}"),
    ("DELETE", "/task/{id}"),
    ("GET", "/task/{id}/kill"),
    ("POST", "/task/{id}/kill"),
    ("GET", "/task/{id}/log"),
    ("GET", "/task/{id}/output"),
    ("GET", "/task/{id}/output/result.csv"),
]
INVALID_IDS = [
    "abc",
    "-1",
    "0",
    "00",
    "1.5",
    "1e3",
    "0x1f",
    "+7",
    "%20",
    "\u0663",  # an Arabic-Indic digit: str.isdigit() says yes, the database would not
    str(2**63),
    "99999999999999999999999",
    "9" * 5000,  # longer than int() accepts from a string
]


def _plural(path: str) -> str:
    head, _, tail = path[1:].partition("/")
    return f"/{head}s/{tail}"


@on_both
@pytest.mark.parametrize(("method", "template"), ID_ROUTES)
def test_an_unknown_id_is_a_json_404_in_both_spellings_and_they_agree(
    client: FlaskClient, method: str, template: str
) -> None:
    singular = client.open(template.format(id=424242), method=method)
    plural = client.open(_plural(template).format(id=424242), method=method)
    assert singular.status_code == plural.status_code == 404
    assert singular.is_json and plural.is_json
    assert singular.json == plural.json
    assert "424242" in singular.json["error"]


@pytest.mark.parametrize("bad_id", INVALID_IDS)
@pytest.mark.parametrize(("method", "template"), ID_ROUTES)
def test_an_invalid_id_is_a_json_404_naming_it(
    client: FlaskClient, method: str, template: str, bad_id: str
) -> None:
    for path in (template, _plural(template)):
        answer = client.open(path.format(id=bad_id), method=method)
        assert answer.status_code == 404, (path, answer.data[:200])
        assert answer.is_json
        assert answer.json["error"].startswith(("no module", "no task"))


@on_both
def test_the_largest_database_id_reaches_the_service_and_is_simply_unknown(
    client: FlaskClient,
) -> None:
    largest = 2**63 - 1
    assert client.get(f"/module/{largest}").json == {"error": f"no module {largest}"}
    assert client.get(f"/tasks/{largest}").json == {"error": f"no task {largest}"}


def test_an_unknown_route_and_a_wrong_method_answer_json_not_html(client: FlaskClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.is_json and missing.json["error"]
    wrong = client.put("/modules")
    assert wrong.status_code == 405 and wrong.is_json
    assert set(wrong.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize("bad_id", ["-1", "abc", "99999999999999999999999", "0"])
def test_a_real_server_answers_json_404s_for_invalid_ids(
    live_server: LiveServer, bad_id: str
) -> None:
    for method, template in ID_ROUTES:
        for path in (template, _plural(template)):
            answer = http(method, live_server.url + path.format(id=bad_id))
            assert answer.status == 404, (method, path)
            assert answer.headers["Content-Type"] == "application/json"
            assert "error" in answer.json()


@on_both
def test_a_real_server_answers_json_404s_for_unknown_ids_in_both_spellings(
    live_server: LiveServer,
) -> None:
    for method, template in ID_ROUTES:
        singular = http(method, live_server.url + template.format(id=31337))
        plural = http(method, live_server.url + _plural(template).format(id=31337))
        assert singular.status == plural.status == 404, (method, template)
        assert singular.json() == plural.json()
