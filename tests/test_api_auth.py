"""With an API token set, every changing request needs it; reads stay open unless protected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service
from tests.support.helpers import wait_for_status, write_module

if TYPE_CHECKING:
    from flask.testing import FlaskClient

TOKEN = "s3cret-Tökén"  # non-ASCII on purpose: compared as bytes
GOOD = {"Authorization": f"Bearer {TOKEN}"}
CHANGING = [
    ("POST", "/modules"),
    ("DELETE", "/module/7"),
    ("DELETE", "/modules/7"),
    ("GET", "/module/7/run"),
    ("POST", "/module/7/run"),
    ("GET", "/modules/7/run"),
    ("POST", "/modules/7/run"),
    ("DELETE", "/task/7"),
    ("DELETE", "/tasks/7"),
    ("GET", "/task/7/kill"),
    ("POST", "/task/7/kill"),
    ("GET", "/tasks/7/kill"),
    ("POST", "/tasks/7/kill"),
]
READS = ["/modules", "/module/7", "/tasks", "/task/7", "/task/7/log", "/openapi.json"]


def _client(settings: Settings, **overrides: object) -> Iterator[FlaskClient]:
    service = Service(settings.with_overrides(api_token=TOKEN, **overrides))
    try:
        yield create_app(service=service).test_client()
    finally:
        service.registry.join_background(timeout=120)
        service.close()


@pytest.fixture
def guarded(settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app with an API token."""
    yield from _client(settings)


@pytest.fixture
def locked(settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app with an API token that also protects reads."""
    yield from _client(settings, protect_reads=True)


@pytest.mark.parametrize(("method", "path"), CHANGING)
def test_a_changing_request_without_the_token_is_a_401(
    guarded: FlaskClient, method: str, path: str
) -> None:
    answer = guarded.open(path, method=method)
    assert answer.status_code == 401 and answer.is_json
    assert "Bearer" in answer.json["error"]
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer wrong", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN}x", ""]
)
def test_a_wrong_or_malformed_token_is_a_401(guarded: FlaskClient, header: str) -> None:
    answer = guarded.post("/module/7/run", headers={"Authorization": header})
    assert answer.status_code == 401


@pytest.mark.parametrize(("method", "path"), CHANGING)
def test_a_changing_request_with_the_token_passes_to_the_route(
    guarded: FlaskClient, method: str, path: str
) -> None:
    answer = guarded.open(path, method=method, headers=GOOD)
    # unknown ids and an empty registration: the route itself answered
    assert answer.status_code in {400, 404}, answer.json


@pytest.mark.parametrize("path", READS)
def test_reads_stay_open_with_a_token(guarded: FlaskClient, path: str) -> None:
    assert guarded.get(path).status_code in {200, 404}


@pytest.mark.parametrize("path", READS)
def test_protected_reads_need_the_token_too(locked: FlaskClient, path: str) -> None:
    assert locked.get(path).status_code == 401
    assert locked.get(path, headers=GOOD).status_code in {200, 404}


def test_health_stays_open_even_with_protected_reads(locked: FlaskClient) -> None:
    assert locked.get("/health").status_code == 200


def test_with_the_token_a_module_is_registered_and_run(
    guarded: FlaskClient, tmp_path: Path
) -> None:
    folder = write_module(tmp_path / "src", name="guarded", code="(out / 'a.txt').write_text('a')")
    refused = guarded.post("/modules", json={"source": str(folder)})
    assert refused.status_code == 401
    assert guarded.get("/modules").json == []
    accepted = guarded.post("/modules", json={"source": str(folder)}, headers=GOOD)
    assert accepted.status_code == 202
    module_id = accepted.json["id"]
    wait_for_status(lambda: guarded.get(f"/module/{module_id}").json, {"installed", "error"})
    assert guarded.get(f"/module/{module_id}/run").status_code == 401
    run = guarded.get(f"/module/{module_id}/run", headers=GOOD)
    assert run.status_code == 202 and run.json["task"] >= 1
    task_id = run.json["task"]
    assert guarded.get(f"/task/{task_id}?wait=30").json["status"] == "done"
