"""Fuzz the REST API from its own /openapi.json: no 500, no answer that breaks the schema.

What is fuzzed, and why: a real ``serve`` process on a fresh data folder holding one harmless
module (it writes its arguments to a file) and one finished task. Every read is fuzzed, and so
are the changing routes that stay inside that folder: running the module, killing and deleting
tasks. Registering (``POST /modules``), updating and removing modules are left out: a fuzzer
choosing sources would clone and build environments for minutes, and removing the one module would
leave every later run case answering 404. Those routes are covered by the hostile-input
catalogue instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.paths import DATA
from tests.support.server import ServerProcess

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}  # per operation
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
LEFT_OUT = [("POST", "/modules"), ("DELETE", "/module/{module_id}"),
            ("DELETE", "/modules/{module_id}"), ("POST", "/module/{module_id}/update"),
            ("POST", "/modules/{module_id}/update")]  # fmt: skip


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Iterator[ServerProcess]:
    """A real server with one harmless module and one done task."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    server = ServerProcess(home, uv_cache, max_running="2", task_timeout="20")
    try:
        server.start()
        module = server.register(DATA / "modules" / "echo")
        task = server.run(module, text="seed")
        assert server.wait_final(task)["status"] == "done"
        yield server
    finally:
        server.close()


def _operations(url: str) -> list[Any]:
    schema: Any = schemathesis.openapi.from_url(url + "/openapi.json")
    for method, path in LEFT_OUT:
        schema = schema.exclude(method=method, path=path)
    operations: list[Any] = [result.ok() for result in schema.get_all_operations()]
    return operations


def _fuzz(operation: Any, mode: GenerationMode, examples: int, counts: dict[str, int]) -> None:
    """Send up to ``examples`` generated requests (valid or not, per ``mode``) to one operation."""
    label = operation.label

    @settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        counts[label] += 1
        case.call_and_validate(checks=CHECKS, timeout=30)

    try:
        check()
    except Unsatisfiable:
        # an operation without parameters has no invalid form to generate (GET /health)
        assert mode is GenerationMode.NEGATIVE, label


@pytest.mark.slow
def test_fuzzing_the_api_finds_no_server_error_and_no_schema_violation(
    fuzzed: ServerProcess, tmp_path: Path
) -> None:
    operations = _operations(fuzzed.url)
    assert len(operations) >= 20, [op.label for op in operations]
    counts: dict[str, int] = {}
    began = time.monotonic()
    for operation in operations:
        counts[operation.label] = 0
        for mode, examples in EXAMPLES.items():
            _fuzz(operation, mode, examples, counts)
    seconds = time.monotonic() - began
    health = fuzzed.call("GET", "/health").json()
    figures = {"operations": len(operations), "cases": sum(counts.values()),
               "seconds": round(seconds, 1), "tasks_after": health["tasks"]}  # fmt: skip
    print("\nfuzz:", json.dumps(figures))
    (tmp_path.parent / "fuzz-figures.json").write_text(json.dumps(figures))
    assert health["modules"] == 1  # the fuzzing stayed inside the harmless module
    assert fuzzed.process is not None and fuzzed.process.poll() is None
