"""The WSGI server: where it may listen, and a real `serve` process that stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra.api.server import check_listen_address, is_loopback
from orchestra.config import Settings
from orchestra.errors import InvalidInput
from orchestra.service import Service
from tests.support.helpers import clean_environ, free_port, http, run_cli, wait_for
from tests.support.paths import ROOT


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"])
def test_loopback_addresses_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org", "10.0.0.1"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_listening_beyond_loopback_needs_a_token_or_insecure(settings: Settings) -> None:
    public = settings.with_overrides(host="0.0.0.0")
    with pytest.raises(InvalidInput, match="ORCHESTRA_API_TOKEN"):
        check_listen_address(public)
    check_listen_address(public.with_overrides(api_token="t"))
    check_listen_address(public, tokens_exist=True)
    check_listen_address(public.with_overrides(insecure=True))
    check_listen_address(settings)


def test_serve_refuses_a_public_address_without_a_token_before_touching_anything(
    settings: Settings,
) -> None:
    code, out, err = run_cli(["serve", "--host", "0.0.0.0", "--port", "0"], settings)
    assert code == 2
    assert err.startswith("orchestra: error: refusing to listen on 0.0.0.0 without an API token")
    assert "Traceback" not in err
    assert not (settings.home / "orchestra.db").exists()


def _environment(home: Path, uv_cache: Path) -> dict[str, str]:
    env = clean_environ()
    env.update(
        ORCHESTRA_HOME=str(home),
        ORCHESTRA_UV_CACHE=str(uv_cache),
        PYTHONPATH=str(ROOT / "src"),
    )
    return env


@pytest.fixture
def serve_process(tmp_path: Path, uv_cache: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m orchestra serve`` on a free port, answering /health."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestra", "serve", "--port", str(port)],
        env=_environment(tmp_path / "home", uv_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _health(url, process), bool, timeout=30, what="the server's /health")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _health(url: str, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"serve exited early: {process.communicate()[1]}")
    try:
        return http("GET", url + "/health", timeout=2).status == 200
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_health_and_stops_cleanly_on_a_signal(
    serve_process: tuple[subprocess.Popen[str], str], signum: signal.Signals
) -> None:
    process, url = serve_process
    health = http("GET", url + "/health").json()
    assert health["status"] == "ok" and health["modules"] == 0
    assert http("GET", url + "/module/-1").json() == {"error": "no module '-1'"}
    began = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert time.monotonic() - began < 15
    assert "server stopped" in err
    assert "Traceback" not in err


def test_a_token_in_the_database_is_enough_to_listen_beyond_loopback(
    service: Service, settings: Settings
) -> None:
    public = settings.with_overrides(host="0.0.0.0")
    with pytest.raises(InvalidInput):
        check_listen_address(public, tokens_exist=service.access.tokens.enabled())
    service.access.create_token("ops", role="operate")
    check_listen_address(public, tokens_exist=service.access.tokens.enabled())
