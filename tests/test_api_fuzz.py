"""Generated requests from the OpenAPI document: no answer is a 500, every error is JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import schemathesis
from hypothesis import HealthCheck, given, settings

if TYPE_CHECKING:
    from flask import Flask

EXAMPLES_PER_OPERATION = 40


def _problem(case: Any, response: Any) -> str | None:
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} that is not JSON: {response.text[:300]}"
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return f"{response.status_code} without an error message: {body!r}"
    return None


def test_generated_requests_never_crash_the_api_and_errors_are_json(app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same requests on every run
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            problem = _problem(case, case.call())
            if problem:
                problems.append(f"{case.method} {case.formatted_path} {case.query!r}: {problem}")

        check()
    assert not problems, "\n".join(problems[:20])
