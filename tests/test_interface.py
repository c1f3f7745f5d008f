"""The local service and the remote client offer the command line the same calls."""

from __future__ import annotations

import inspect

import pytest

from orchestra.client import Client
from orchestra.interface import Orchestra
from orchestra.service import Service

_CALLS = sorted(
    name
    for name, member in vars(Orchestra).items()
    if callable(member) and not name.startswith("_")
)


def _shape(function: object) -> list[tuple[str, object, object]]:
    """Each parameter's name, kind and default (``self`` left out)."""
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in parameters if p.name != "self"]


def test_the_interface_lists_what_the_command_line_calls() -> None:
    assert {"register", "run", "get_task", "task_outputs", "close"} <= set(_CALLS)


@pytest.mark.parametrize("name", _CALLS)
def test_service_and_client_take_the_same_parameters(service: Service, name: str) -> None:
    expected = _shape(getattr(Orchestra, name))
    assert _shape(getattr(service, name)) == expected, f"Service.{name} differs"
    client = Client("http://127.0.0.1:9")  # never connected: only its methods are read
    assert _shape(getattr(client, name)) == expected, f"Client.{name} differs"
