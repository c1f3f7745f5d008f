"""Fixtures shared by every test: a fresh data folder per test, one installer cache per run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.config import Settings, load_settings

if TYPE_CHECKING:
    from orchestra.service import Service

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installer cache for the whole run, as a real deployment shares one."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path) -> Settings:
    """Settings on a fresh data folder, ignoring the caller's ORCHESTRA_* variables."""
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "max_running": 2},
        environ={},
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    """A service on the fresh data folder, closed after the test."""
    from orchestra.service import Service

    svc = Service(settings)
    try:
        yield svc
    finally:
        svc.close()
