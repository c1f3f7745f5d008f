"""Fixtures shared by every test: a fresh data folder per test, one installer cache per run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.config import Settings, load_settings
from tests.support.server import LiveServer, serve_in_thread

if TYPE_CHECKING:
    from orchestra.service import Service

# session fixtures for real services: a git daemon, a PostgreSQL server, one browser (a
# session fixture imported into two test files would be two, and Playwright's second
# synchronous instance refuses to start inside the first one's event loop)
pytest_plugins = [
    "tests.support.gitserver",
    "tests.support.postgres",
    "tests.support.redis",
    "tests.support.netns",
    "tests.support.pypi",
    "tests.support.browser",
]


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installer cache for the whole run, as a real deployment shares one."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """Each database Orchestra supports: a test file that names this fixture (usually with
    ``pytestmark = pytest.mark.usefixtures("database")``) runs on both; the URL, "" for SQLite."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("orchestra_postgres_url"))


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, uv_cache: Path) -> Settings:
    """Settings on a fresh data folder, ignoring the caller's ORCHESTRA_* variables.

    The database is SQLite in that folder, or the ``database`` fixture's where a test uses it.
    """
    url = str(request.getfixturevalue("database")) if "database" in request.fixturenames else ""
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "max_running": 2,
         "database_url": url},
        environ={},
        system_config=None,  # a machine's /etc/orchestra/config.toml is not the test's
    )  # fmt: skip


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    """A service on the fresh data folder, closed after the test."""
    from orchestra.service import Service

    svc = Service(settings)
    try:
        yield svc
    finally:
        svc.close()


if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient


@pytest.fixture
def app(service: Service) -> Flask:
    """The REST API around the test's service."""
    from orchestra.app import create_app

    return create_app(service=service)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for ``app``."""
    return app.test_client()


@pytest.fixture
def live_server(service: Service) -> Iterator[LiveServer]:
    """The API served by waitress on 127.0.0.1 (a free port), with the task runner started."""
    with serve_in_thread(service) as server:
        yield server
