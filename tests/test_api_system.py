"""/health and /openapi.json; the document covers exactly the app's routes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from orchestra import __version__
from orchestra.api.openapi import OPERATIONS, is_documented, openapi_path
from orchestra.app import create_app
from orchestra.service import Service

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

# every test here runs on SQLite and on PostgreSQL
pytestmark = pytest.mark.usefixtures("database")

_SKIPPED = {"HEAD", "OPTIONS"}


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (openapi_path(rule), method.lower())
        for rule in app.url_map.iter_rules()
        if is_documented(rule)
        for method in (rule.methods or set()) - _SKIPPED
    }


def test_health_answers_status_version_and_counts(client: FlaskClient) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json["status"] == "ok"
    assert answer.json["version"] == __version__
    assert answer.json["modules"] == 0
    assert set(answer.json["tasks"]) == {"queued", "running", "done", "error", "killed"}


def test_the_openapi_document_lists_every_route_and_nothing_else(
    app: Flask, client: FlaskClient
) -> None:
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == _routes(app)
    assert ("/module/{module_id}/run", "get") in documented
    assert ("/modules/{module_id}/run", "post") in documented
    assert ("/tasks/{task_id}/output/{name}", "get") in documented


def test_every_documented_endpoint_is_a_route_of_the_app(app: Flask) -> None:
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules() if is_documented(rule)}
    assert set(OPERATIONS) == endpoints


def test_every_operation_names_its_path_parameters_and_the_error_schema(
    client: FlaskClient,
) -> None:
    document = client.get("/openapi.json").json
    operation_ids = []
    for path, item in document["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for operation in item.values():
            operation_ids.append(operation["operationId"])
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == placeholders, path
            error = operation["responses"]["400"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}
    assert len(operation_ids) == len(set(operation_ids))
    assert "Error" in document["components"]["schemas"]


def test_request_bodies_are_described_where_requests_carry_them(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    register = paths["/modules"]["post"]["requestBody"]["content"]
    assert set(register) == {"application/json", "multipart/form-data"}
    assert "requestBody" in paths["/module/{module_id}/run"]["post"]
    assert "requestBody" not in paths["/module/{module_id}/run"]["get"]
    assert paths["/module/{module_id}/run"]["get"]["deprecated"] is True


def test_with_a_token_the_document_marks_the_changing_operations(service: Service) -> None:
    guarded = Service(service.settings.with_overrides(api_token="t"))
    try:
        document = create_app(service=guarded).test_client().get("/openapi.json").json
    finally:
        guarded.close()
    paths = document["paths"]
    assert paths["/modules"]["post"]["security"] == [{"bearer": []}]
    assert paths["/task/{task_id}/kill"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/modules"]["get"]
    assert "401" in paths["/task/{task_id}"]["delete"]["responses"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_document_is_a_valid_openapi_schema(client: FlaskClient) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in schema.raw_schema["paths"].values())
