"""The one table of rules: every route has one, and each route × each role is judged by it
against a real server."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from orchestra.access.roles import Role
from orchestra.access.rules import RULES
from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service
from tests.support.server import LiveServer, serve_in_thread

BOOT = "boot-token"
_SKIPPED = frozenset({"HEAD", "OPTIONS"})
# what a path argument becomes in a request: ids that do not exist, a name that does not
_SAMPLES = {"module_id": "999999", "task_id": "999999"}


def _routes(service: Service) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) for every rule of the app, one path per endpoint and method."""
    app = create_app(service=service)
    seen: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(
            r"<(?:(\w+):)?(\w+)>", lambda m: _SAMPLES.get(m.group(1) or "", "nothing"), rule.rule
        )
        for method in sorted((rule.methods or set()) - _SKIPPED):
            seen.setdefault((rule.endpoint, method), path)
    return [(endpoint, method, path) for (endpoint, method), path in sorted(seen.items())]


def test_every_route_of_the_api_and_the_dashboard_has_a_rule(service: Service) -> None:
    app = create_app(service=service)
    missing = sorted({r.endpoint for r in app.url_map.iter_rules()} - set(RULES))
    assert missing == [], f"routes without an access rule: {missing}"


def test_a_route_without_a_rule_is_refused_even_without_tokens(service: Service) -> None:
    app = create_app(service=service)
    app.add_url_rule("/unruled", endpoint="unruled", view_func=lambda: "open?")
    answer = app.test_client().get("/unruled")
    assert answer.status_code == 403 and "no access rule" in answer.json["error"]


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict]]:
    """A real server with the bootstrap token and one token of each role."""
    home = tmp_path_factory.mktemp("matrix") / "home"
    service = Service(Settings(home=home, api_token=BOOT, max_running=1))
    tokens = {role: service.create_token(f"t-{role.value}", role=role.value).token
              for role in Role}  # fmt: skip
    with serve_in_thread(service) as live:
        yield live, tokens
    service.close()


def _ask(url: str, method: str, path: str, token: str | None) -> tuple[int, str]:
    """One request without following redirects: its status and Location."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Origin": url, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = b"{}" if method in {"POST", "PUT"} else None
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location") or ""
    finally:
        connection.close()


@pytest.mark.parametrize("role", [*Role, None], ids=[*(r.value for r in Role), "no-token"])
def test_each_route_answers_each_role_as_its_rule_says(
    matrix_server: tuple[LiveServer, dict], role: Role | None
) -> None:
    live, tokens = matrix_server
    wrong: list[str] = []
    for endpoint, method, path in _routes(live.service):
        if endpoint == "web.signin_post":
            continue  # open to all, it answers 401 itself to an empty form (tested apart)
        rule = RULES[endpoint]
        status, location = _ask(live.url, method, path, tokens[role] if role else None)
        if role is None:
            allowed = rule.anonymous != "never"
            refused = status == 401 or (status in {302, 303} and "/ui/signin" in location)
        else:
            allowed = rule.allows(role)
            refused = status == 403
        if allowed == refused or (allowed and status in {401, 403}):
            wrong.append(f"{method} {path} ({endpoint}): {status}")
    assert wrong == [], "answers that do not follow the rules table:\n" + "\n".join(wrong)


def test_a_refusal_names_the_role_needed_and_a_missing_token_says_so(
    matrix_server: tuple[LiveServer, dict],
) -> None:
    live, tokens = matrix_server
    from tests.support.helpers import http

    worker = {"Authorization": f"Bearer {tokens[Role.WORKER]}"}
    answer = http("GET", live.url + "/modules", headers=worker)
    assert answer.status == 403 and "needs the role read" in answer.json()["error"]
    answer = http("POST", live.url + "/tasks/prune", headers={})
    assert answer.status == 401 and "needs a token" in answer.json()["error"]
    runner = {"Authorization": f"Bearer {tokens[Role.RUN]}"}
    answer = http("POST", live.url + "/tasks/prune", headers=runner)
    assert answer.status == 403 and "needs the role operate" in answer.json()["error"]
    assert http("GET", live.url + "/health", headers=worker).status == 200


@pytest.mark.parametrize(
    ("role", "offered", "hidden"),
    [
        ("read", [], ["/ui/register", "/ui/module/1/run", "/ui/audit", "/ui/module/1/update"]),
        ("run", ["/ui/module/1/run"], ["/ui/register", "/ui/module/1/update", "/ui/audit"]),
        ("operate", ["/ui/register", "/ui/module/1/run", "/ui/module/1/update"], ["/ui/audit"]),
        ("admin", ["/ui/register", "/ui/module/1/run", "/ui/audit"], []),
    ],
)
def test_the_dashboard_signs_in_with_any_token_and_offers_only_what_its_role_may(
    settings: Settings, role: str, offered: list[str], hidden: list[str]
) -> None:
    from tests.support.paths import EXAMPLES

    here = {"Origin": "http://localhost"}
    service = Service(settings.with_overrides(api_token=BOOT))
    try:
        service.register(str(EXAMPLES / "catalog"))
        token = service.create_token("someone", role=role).token
        client = create_app(service=service).test_client()
        signed = client.post("/ui/signin", data={"token": token}, headers=here)
        assert signed.status_code == 303
        page = client.get("/ui/module/1").get_data(as_text=True)
        assert f"someone ({role})" in page
        for link in offered:
            assert link in page, link
        for link in hidden:
            assert link not in page, link
        # what is hidden is refused by the server too
        answer = client.post("/ui/module/1/update", headers=here)
        assert answer.status_code == (403 if role in {"read", "run"} else 303)
    finally:
        service.close()


def test_the_dashboards_task_list_shows_and_filters_who_submitted(service: Service) -> None:
    from orchestra.access.caller import Caller, acting_as
    from tests.support.paths import EXAMPLES

    service.register(str(EXAMPLES / "catalog"))
    for name, user in (("front", "alice"), ("batch", None)):
        with acting_as(Caller(name, Role.RUN, user)):
            service.run(1, {})
    client = create_app(service=service).test_client()
    page = client.get("/ui/tasks").get_data(as_text=True)
    assert "front" in page and "alice" in page and "batch" in page
    only = client.get("/ui/tasks?submitted_by=front").get_data(as_text=True)
    assert "alice" in only and "batch" not in only.split("<tbody>")[1]
    assert "Submitted by" in client.get("/ui/task/1").get_data(as_text=True)
