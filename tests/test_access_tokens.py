"""Tokens with roles: made, listed and revoked from the command line and the API; kept only
as hashes; revoked at once on every server sharing the database; expiring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestra.config import Settings
from orchestra.service import Service
from tests.support.helpers import http, run_cli, wait_for
from tests.support.postgres import PostgresServer
from tests.support.server import ServerProcess, serve_in_thread

BOOT = "boot-token"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_command_line_makes_lists_and_revokes_tokens(settings: Settings) -> None:
    code, out, err = run_cli(["token", "create", "front", "--role", "run"], settings)
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    assert len(secret) >= 43 and " " not in secret  # 256 bits, alone on its line
    code, out, _ = run_cli(["--json", "token", "create", "ops", "--role", "operate",
                            "--expires", "30"], settings)  # fmt: skip
    made = json.loads(out)
    assert code == 0 and set(made) == {"name", "role", "token", "expires"}
    assert made["role"] == "operate" and made["expires"] is not None
    code, out, _ = run_cli(["token", "list"], settings)
    assert code == 0 and "front" in out and "ops" in out and "operate" in out
    assert secret not in out and made["token"] not in out
    assert run_cli(["token", "revoke", "front"], settings)[0] == 0
    assert "front" not in run_cli(["token", "list"], settings)[1]
    # the name is free again once revoked
    assert run_cli(["token", "create", "front", "--role", "read"], settings)[0] == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["token", "create", "Front", "--role", "run"], "not a token name"),
        (["token", "create", "x" * 65, "--role", "run"], "not a token name"),
        (["token", "revoke", "nobody"], "no token named 'nobody'"),
    ],
)
def test_bad_token_requests_name_the_problem(
    settings: Settings, argv: list[str], says: str
) -> None:
    code, out, err = run_cli(argv, settings)
    assert code != 0 and says in err and "Traceback" not in err


def test_a_name_is_unique_among_live_tokens(settings: Settings) -> None:
    assert run_cli(["token", "create", "dup", "--role", "run"], settings)[0] == 0
    code, _, err = run_cli(["token", "create", "dup", "--role", "read"], settings)
    assert code == 4 and "exists" in err


def test_the_api_makes_lists_and_revokes_tokens_for_admins_only(settings: Settings) -> None:
    service = Service(settings.with_overrides(api_token=BOOT))
    with serve_in_thread(service) as live:
        url, admin = live.url, _bearer(BOOT)
        made = http("POST", url + "/tokens", json_body={"name": "ops", "role": "operate"},
                    headers=admin)  # fmt: skip
        assert made.status == 201 and set(made.json()) == {"name", "role", "token", "expires"}
        ops = _bearer(made.json()["token"])
        listed = http("GET", url + "/tokens", headers=admin).json()["tokens"]
        assert [t["name"] for t in listed] == ["ops"] and "token" not in listed[0]
        assert listed[0]["last_used"] is None
        assert http("GET", url + "/tokens", headers=ops).status == 403
        assert http("POST", url + "/tasks/prune?older_than=30", headers=ops).status == 200
        listed = http("GET", url + "/tokens", headers=admin).json()["tokens"]
        assert listed[0]["last_used"] is not None
        bad = http("POST", url + "/tokens", json_body={"name": "x", "role": "boss"}, headers=admin)
        assert bad.status == 400 and "role" in bad.json()["error"]
        assert http("DELETE", url + "/token/ops", headers=admin).status == 204
        again = http("POST", url + "/tasks/prune?older_than=30", headers=ops)
        assert again.status == 401 and "revoked" in again.json()["error"]
        assert http("DELETE", url + "/token/ops", headers=admin).status == 404
    service.close()


def test_a_token_expires(settings: Settings) -> None:
    service = Service(settings.with_overrides(api_token=BOOT))
    made = service.create_token("brief", role="read", expires_days=2 / 86400)  # two seconds
    with serve_in_thread(service) as live:
        url = live.url + "/tokens"
        headers = {**_bearer(made.token)}
        assert http("GET", live.url + "/tasks", headers=headers).status == 200
        answer = wait_for(lambda: http("GET", live.url + "/tasks", headers=headers),
                          lambda a: a.status != 200, timeout=10, what="the expiry")  # fmt: skip
        assert answer.status == 401 and "expired" in answer.json()["error"]
        assert http("GET", url, headers=_bearer(BOOT)).json()["tokens"][0]["name"] == "brief"
    service.close()


def test_a_revocation_holds_at_once_on_every_server_sharing_the_database(
    tmp_path: Path, uv_cache: Path, postgres_server: PostgresServer
) -> None:
    database = postgres_server.orchestra_database()
    servers = [ServerProcess(tmp_path / name / "home", uv_cache, label=name, api_token=BOOT,
                             database_url=database) for name in ("a", "b")]  # fmt: skip
    for server in servers:
        (server.home).mkdir(parents=True)
        server.start()
    try:
        a, b = servers
        made = http("POST", a.url + "/tokens", json_body={"name": "front", "role": "run"},
                    headers=_bearer(BOOT)).json()  # fmt: skip
        front = _bearer(made["token"])
        for _ in range(20):  # both servers know it (and would have cached it, if they did)
            assert http("GET", b.url + "/tasks?limit=1", headers=front).status == 200
        assert http("DELETE", a.url + "/token/front", headers=_bearer(BOOT)).status == 204
        answer = http("GET", b.url + "/tasks?limit=1", headers=front)
        assert answer.status == 401 and "revoked" in answer.json()["error"]
    finally:
        for server in servers:
            server.close()


def test_the_plain_token_is_never_written_in_the_data_folder_or_the_logs(
    tmp_path: Path, uv_cache: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, uv_cache, api_token=BOOT)
    server.start()
    try:
        made = http("POST", server.url + "/tokens", json_body={"name": "x", "role": "operate"},
                    headers=_bearer(BOOT)).json()  # fmt: skip
        secret = made["token"]
        for path in ("/tasks", "/tokens", "/tasks/prune", "/module/9/update", "/nowhere"):
            http("POST" if "p" in path[-6:] else "GET", server.url + path, headers=_bearer(secret))
        time.sleep(1.0)  # the last use is written now and then: let it land
    finally:
        server.close()
    needle = secret.encode()
    found = [str(p) for p in tmp_path.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert found == []


def test_a_server_without_tokens_refuses_to_make_one_for_anybody(service: Service) -> None:
    from orchestra.app import create_app

    client = create_app(service=service).test_client()
    answer = client.post("/tokens", json={"name": "mine", "role": "admin"})
    assert answer.status_code == 403 and "orchestra token create" in answer.json["error"]
    assert service.list_tokens() == []
    assert client.get("/modules").status_code == 200  # still open to all
