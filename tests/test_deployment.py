"""docker-compose.yml read as Orchestra would run it: settings, commands, what is shared.

No Docker engine is needed: the file is parsed, each Orchestra service's environment is
turned into settings by the same code a container would run, and its command is parsed by
the real command line. What this cannot show is the images building and the containers
talking; the README says so.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from orchestra.cli.parser import build_parser
from orchestra.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRA_SERVICES = ("api", "worker-1", "worker-2")
TOKEN = "a-token-from-the-operator"
# what the operator exports before `docker compose up`: the file holds no secret itself
SECRETS = {
    "ORCHESTRA_API_TOKEN": TOKEN,
    "ORCHESTRA_DB_PASSWORD": "db-password-from-the-operator",
    "ORCHESTRA_REDIS_PASSWORD": "redis-password-from-the-operator",
}
# made by `orchestra token create … --role worker` once the API runs, then exported
WORKER_TOKEN = "a-worker-token"
EXPORTED = {**SECRETS, "ORCHESTRA_WORKER_TOKEN": WORKER_TOKEN}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _fill(text: str, exported: dict[str, str] = EXPORTED) -> str:
    """``text`` with ``${NAME:?…}`` and ``${NAME:-default}`` filled in as Compose would."""

    def one(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if name in exported:
            return exported[name]
        assert kind == "-", f"${{{name}}} has no default and is not exported"
        return default

    return _VARIABLE.sub(one, text)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as Compose would fill it in."""
    return {str(k): _fill(str(v)) for k, v in service["environment"].items()}


def _settings(compose: dict[str, Any], name: str) -> Settings:
    return load_settings(environ=_environment(compose["services"][name]))


def _volumes(service: dict[str, Any]) -> set[str]:
    return {str(v).split(":", 1)[0] for v in service.get("volumes", [])}


@pytest.mark.parametrize("name", ORCHESTRA_SERVICES)
def test_every_orchestra_setting_named_exists(compose: dict[str, Any], name: str) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    named = {k for k in _environment(compose["services"][name]) if k.startswith(ENV_PREFIX)}
    assert named, name
    assert named <= known, f"{name}: unknown settings {sorted(named - known)}"


@pytest.mark.parametrize("name", ORCHESTRA_SERVICES)
def test_each_service_runs_the_celery_executor_on_the_shared_services(
    compose: dict[str, Any], name: str
) -> None:
    settings = _settings(compose, name)
    services = compose["services"]
    assert settings.executor == "celery"
    # the API holds the admin token; workers only a worker token
    assert settings.api_token == (TOKEN if name == "api" else WORKER_TOKEN)
    database, broker = urlsplit(settings.database_url), urlsplit(settings.broker_url)
    assert database.scheme == "postgresql+psycopg" and broker.scheme == "redis"
    assert database.hostname in services and broker.hostname in services
    postgres = _environment(services[database.hostname])
    assert (database.username, database.password, database.path.lstrip("/")) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    )  # fmt: skip
    assert str(settings.home) == "/data" and "/data" in {
        str(v).split(":", 1)[1] for v in services[name]["volumes"]
    }


def test_workers_reach_the_api_where_it_listens(compose: dict[str, Any]) -> None:
    api = build_parser().parse_args(compose["services"]["api"]["command"][1:])
    assert (api.command, api.host) == ("serve", "0.0.0.0")
    for name in ORCHESTRA_SERVICES:
        target = urlsplit(_settings(compose, name).api_url)
        assert (target.hostname, target.port) == ("api", api.port), name
    assert f"127.0.0.1:{api.port}:{api.port}" in map(_fill, compose["services"]["api"]["ports"])


def test_the_api_is_published_on_loopback_unless_told_otherwise(compose: dict[str, Any]) -> None:
    (published,) = compose["services"]["api"]["ports"]
    assert _fill(published) == "127.0.0.1:8470:8470"
    told = _fill(published, {**SECRETS, "ORCHESTRA_PUBLISH": "0.0.0.0"})
    assert told == "0.0.0.0:8470:8470"


def test_no_secret_is_written_in_the_file_and_each_must_be_given() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in text, name
    for secret in SECRETS.values():
        assert secret not in text
    with pytest.raises(AssertionError, match="ORCHESTRA_DB_PASSWORD"):
        _fill(text, {})


def test_redis_asks_for_the_password_the_broker_url_gives(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = [_fill(word) for word in redis["command"]]
    password = command[command.index("--requirepass") + 1]
    assert password == SECRETS["ORCHESTRA_REDIS_PASSWORD"]
    for name in ORCHESTRA_SERVICES:
        assert urlsplit(_settings(compose, name).broker_url).password == password
    assert _environment(redis)["REDISCLI_AUTH"] == password  # its health check logs in


@pytest.mark.parametrize("name", ["worker-1", "worker-2"])
def test_each_worker_has_its_own_name_and_folder(compose: dict[str, Any], name: str) -> None:
    services = compose["services"]
    command = services[name]["command"]
    assert command[0] == "orchestra"
    parsed = build_parser().parse_args(command[1:])
    assert (parsed.command, parsed.name, parsed.queues) == ("worker", name, ["default"])
    others = [n for n in ORCHESTRA_SERVICES if n != name]
    for other in others:  # workers and servers share no file system
        assert not _volumes(services[name]) & _volumes(services[other]), (name, other)


def test_orchestra_waits_for_healthy_database_and_broker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ORCHESTRA_SERVICES:
        needs = services[name]["depends_on"]
        for dependency in ("postgres", "redis"):
            assert needs[dependency]["condition"] == "service_healthy", (name, dependency)
            assert services[dependency]["healthcheck"]["test"], dependency


def test_the_image_installs_what_the_services_need_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Celery, Redis's client, psycopg; astropy for VOTable outputs
    assert "'.[distributed,amda]'" in dockerfile
    assert re.search(r"apt-get install[^\n]*\bgit\b[^\n]*\bbubblewrap\b", dockerfile)
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
