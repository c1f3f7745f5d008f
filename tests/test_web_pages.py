"""The dashboard's pages through Flask's test client: content, safety headers, sign-in, origin."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.app import create_app
from orchestra.config import Settings
from orchestra.service import Service
from tests.support.gitserver import GitDaemon, make_repo
from tests.support.helpers import write_module, zipped
from tests.support.paths import DATA, EXAMPLES
from tests.support.pypi import PackageIndex
from tests.test_resolve_as_of import dated_module, dated_version, publish_dated

if TYPE_CHECKING:
    from flask.testing import FlaskClient

TOKEN = "web-Tökén"
HERE = {"Origin": "http://localhost"}  # the test client's own origin
PAGES = ["/ui/", "/ui/tasks", "/ui/register", "/ui/machine", "/ui/signin", "/docs"]


@pytest.fixture
def installed(service: Service) -> Service:
    """The service with the catalog example installed (module 1)."""
    service.register(str(EXAMPLES / "catalog"))
    return service


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", html)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_forbids_inline_script_and_loads_only_its_own_files(
    client: FlaskClient, path: str
) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert "default-src 'self'" in policy and "form-action 'self'" in policy
    assert answer.headers["X-Frame-Options"] == "DENY"
    html = answer.get_data(as_text=True)
    for tag in _scripts(html):
        assert 'src="/' in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)


def test_the_root_redirects_a_browser_to_the_dashboard(client: FlaskClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith("/ui/")


def test_a_module_page_shows_its_inputs_with_types_and_defaults(
    installed: Service, client: FlaskClient
) -> None:
    html = client.get("/ui/module/1").get_data(as_text=True)
    assert 'name="parameter" value="imf_bz"' in html
    assert 'type="number" step="1" name="spacing_hours" value="6"' in html
    assert 'type="number" step="any" name="min_score" value="0.0"' in html
    assert "<em>events</em>" in html  # the description's Markdown, rendered
    for path in ("/ui/module/2", "/ui/module/abc", "/ui/no-such-page"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.mimetype == "text/html", path
        assert "Not found" in answer.get_data(as_text=True)
    assert client.get("/module/abc").mimetype == "application/json"  # the API's stay JSON


def test_a_hostile_description_and_name_are_escaped_or_sanitised(
    service: Service, client: FlaskClient, tmp_path: Path
) -> None:
    folder = write_module(tmp_path / "m", name="<b onmouseover=alert(1)>x</b>", code="pass")
    metadata = (folder / "metadata.json").read_text()
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)> [a](javascript:alert(3))"
    (folder / "metadata.json").write_text(metadata.replace("test module", hostile))
    service.register(str(folder))
    for path in ("/ui/", "/ui/module/1"):
        html = client.get(path).get_data(as_text=True)
        assert all('src="/' in tag for tag in _scripts(html))
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)  # no handler in any real tag
        assert "<img" not in html and 'href="javascript:' not in html
        assert "&lt;b onmouseover=alert(1)&gt;x&lt;/b&gt;" in html


def test_a_change_from_another_origin_is_refused_and_changes_nothing(
    installed: Service, client: FlaskClient
) -> None:
    for headers in (
        {"Origin": "http://localhost:8471"},  # another port of the same host
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://localhost:9999/page"},
        {},  # neither header: a browser always sends one on a form post
    ):
        answer = client.post("/ui/module/1/run", data={"parameter": "x"}, headers=headers)
        assert answer.status_code == 403, headers
        assert "another site or port" in answer.get_data(as_text=True)
    assert installed.list_tasks().total == 0
    same = client.post("/ui/module/1/run", headers={"Referer": "http://localhost/ui/module/1"})
    assert same.status_code == 303
    assert installed.list_tasks().total == 1


def test_run_form_values_are_checked_by_the_service(
    installed: Service, client: FlaskClient
) -> None:
    answer = client.post("/ui/module/1/run", data={"spacing_hours": "six"}, headers=HERE)
    assert answer.status_code == 400
    assert "spacing_hours" in answer.get_data(as_text=True)
    assert installed.list_tasks().total == 0


@pytest.fixture
def guarded(settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app whose changes need the token, with the catalog example."""
    service = Service(settings.with_overrides(api_token=TOKEN))
    try:
        service.register(str(EXAMPLES / "catalog"))
        yield create_app(service=service).test_client()
    finally:
        service.close()


def test_with_a_token_a_change_needs_the_sign_in_cookie(guarded: FlaskClient) -> None:
    assert guarded.get("/ui/module/1").status_code == 200  # reads stay open
    refused = guarded.post("/ui/module/1/run", headers=HERE)
    assert refused.status_code == 401
    wrong = guarded.post("/ui/signin", data={"token": TOKEN.upper()}, headers=HERE)
    assert wrong.status_code == 401
    assert guarded.get_cookie("orchestra_session") is None
    signed = guarded.post("/ui/signin", data={"token": TOKEN, "next": "/ui/tasks"}, headers=HERE)
    assert signed.status_code == 303 and signed.headers["Location"] == "/ui/tasks"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert re.fullmatch(r"orchestra_session=[0-9a-f]{64}", cookie.split(";")[0])  # not the token
    assert guarded.post("/ui/module/1/run", headers=HERE).status_code == 303
    # the cookie is the dashboard's: the JSON API still wants the bearer header
    assert guarded.post("/module/1/run").status_code == 401
    assert guarded.post("/ui/signout", headers=HERE).status_code == 303
    assert guarded.post("/ui/module/1/run", headers=HERE).status_code == 401


def test_sign_in_only_returns_to_a_page_of_this_site(guarded: FlaskClient) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        answer = guarded.post("/ui/signin", data={"token": TOKEN, "next": target}, headers=HERE)
        assert answer.headers["Location"] == "/ui/", target


def test_protected_reads_send_a_browser_to_sign_in(settings: Settings) -> None:
    service = Service(settings.with_overrides(api_token=TOKEN, protect_reads=True))
    try:
        client = create_app(service=service).test_client()
        answer = client.get("/ui/tasks")
        assert answer.status_code == 302 and "/ui/signin" in answer.headers["Location"]
        assert client.get("/ui/signin").status_code == 200
        assert client.get("/metrics").status_code == 302
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/docs/openapi.json").status_code == 302
        client.post("/ui/signin", data={"token": TOKEN}, headers=HERE)
        assert client.get("/docs/openapi.json").json["openapi"].startswith("3.")  # by cookie
        assert client.get("/openapi.json").status_code == 401  # the API's own wants the bearer
    finally:
        service.close()


def test_metrics_count_tasks_queue_durations_registrations_and_requests(
    installed: Service, client: FlaskClient
) -> None:
    task = installed.run(1, {})
    installed.get_task(task.id, wait=60)
    client.post("/modules", json={"source": str(DATA / "modules" / "echo")})
    installed.registry.join_background(60)
    client.get("/ui/tasks")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'orchestra_tasks{status="done"} 1.0' in text
    assert "orchestra_queue_depth 0.0" in text
    assert "orchestra_task_duration_seconds_count 1.0" in text
    assert "orchestra_registrations_total 1.0" in text
    assert 'orchestra_modules{status="installed"} 2.0' in text
    assert 'orchestra_request_seconds_count{endpoint="web.tasks",method="GET",status="200"}' in text
    again = client.get("/metrics").get_data(as_text=True)
    assert "orchestra_task_duration_seconds_count 1.0" in again  # each task counted once


def test_the_machine_page_shows_disk_environments_and_cache(
    installed: Service, client: FlaskClient
) -> None:
    html = client.get("/ui/machine").get_data(as_text=True)
    assert "Free disk" in html and "Example catalog" in html
    assert str(installed.settings.uv_cache_dir) in html
    info = installed.machine()
    assert info.disk_free > 0 and info.environments[0].size.files > 0


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a2a0e0e50000000049454e44ae426082"
)


def test_register_from_git_at_a_ref_in_a_sub_folder_then_update_and_remove(
    service: Service, client: FlaskClient, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "m", name="From git", code="pass")
    files = {f"models/m/{p.relative_to(module)}": p.read_bytes() for p in module.rglob("*.*")}
    repo = git_daemon.new_repo(files)
    make_repo(repo, files, branch="stable")
    form = {"source": git_daemon.url(repo.name), "ref": "stable", "subdir": "models/m"}
    answer = client.post("/ui/register", data=form, headers=HERE)
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/module/1"
    service.registry.join_background(120)
    html = client.get("/ui/module/1").get_data(as_text=True)
    assert "From git" in html and "stable" in html and "models/m" in html
    assert "installed" in html and 'action="/ui/module/1/update"' in html
    before = service.get_module(1).updated.isoformat()
    updated = client.post("/ui/module/1/update", data={"ref": "main"}, headers=HERE)
    assert updated.status_code == 303
    assert updated.headers["Location"].startswith("/ui/module/1?since=")
    following = client.get(updated.headers["Location"]).get_data(as_text=True)
    service.registry.join_background(120)
    assert service.get_module(1).ref == "main"
    assert service.get_module(1).updated.isoformat() != before
    if "Updating in the background" in following:  # the page followed, then stops
        done = client.get(updated.headers["Location"]).get_data(as_text=True)
        assert "Updating in the background" not in done and "data-live-src" not in done
    removed = client.post("/ui/module/1/remove", headers=HERE)
    assert removed.status_code == 303 and removed.headers["Location"] == "/ui/"
    assert service.list_modules(everything=True) == []  # no task: nothing to keep


def test_staged_publish_and_a_removed_module_keeps_its_tasks(
    service: Service, client: FlaskClient
) -> None:
    form = {"source": str(EXAMPLES / "catalog"), "staged": "1"}
    assert client.post("/ui/register", data=form, headers=HERE).status_code == 303
    service.registry.join_background(120)
    assert service.list_modules() == []  # clients do not see it
    page = client.get("/ui/module/1").get_data(as_text=True)
    assert 'class="badge staged"' in page and 'action="/ui/module/1/publish"' in page
    assert client.post("/ui/module/1/publish", headers=HERE).status_code == 303
    assert [m.name for m in service.list_modules()] == ["Example catalog"]
    task = service.run(1, {})
    service.get_task(task.id, wait=60)
    assert client.post("/ui/module/1/remove", headers=HERE).status_code == 303
    assert service.get_module(1).status == "removed"
    listing = client.get("/ui/").get_data(as_text=True)
    assert "Removed modules (1)" in listing
    assert "Example catalog" in client.get(f"/ui/task/{task.id}").get_data(as_text=True)
    purge = client.post("/ui/module/1/remove", data={"purge": "1"}, headers=HERE)
    assert purge.status_code == 303
    assert service.list_modules(everything=True) == [] and service.list_tasks().total == 0


RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"  # this test's own Python


@pytest.fixture
def dated(settings: Settings, package_index: PackageIndex) -> Iterator[Service]:
    """A service whose requirements come from the loopback index: ``dated`` 1.0 (2020), 2.0."""
    publish_dated(package_index)
    service = Service(settings.with_overrides(index_url=package_index.url + "/simple"))
    try:
        yield service
    finally:
        service.close()


def test_the_register_page_offers_as_of_and_the_machine_s_pythons(client: FlaskClient) -> None:
    html = client.get("/ui/register").get_data(as_text=True)
    assert html.count('name="as_of"') == 2 and html.count('name="python_version"') == 2
    assert f'<option value="{RUNNING}">' in html and '<option value="commit">' in html


def test_the_register_form_records_the_operator_s_python_and_as_of(
    dated: Service, tmp_path: Path
) -> None:
    client = create_app(service=dated).test_client()
    form = {"source": str(dated_module(tmp_path / "m", "Old")), "ref": "",
            "as_of": "2022-06-01", "python_version": f" {RUNNING} "}  # fmt: skip
    answer = client.post("/ui/register", data=form, headers=HERE)
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/module/1"
    dated.registry.join_background(120)
    module = dated.get_module(1)
    assert module.status == "installed", module.error
    assert module.python_requested == RUNNING and module.python_version.startswith(RUNNING + ".")
    assert module.as_of == "2022-06-01" and dated_version(dated, 1) == "1.0"
    page = client.get("/ui/module/1").get_data(as_text=True)
    assert f"<dt>Python</dt><dd>{module.python_version} " in page
    assert f"asked for {RUNNING}</span>" in page
    assert "<dt>Resolved as of</dt><dd>2022-06-01 " in page


def test_empty_choices_of_the_zip_form_are_not_given(dated: Service, tmp_path: Path) -> None:
    client = create_app(service=dated).test_client()
    archive = (io.BytesIO(zipped(dated_module(tmp_path / "m", "New"))), "m.zip")
    form = {"file": archive, "subdir": "", "as_of": "", "python_version": ""}
    answer = client.post("/ui/register", data=form, headers=HERE)
    assert answer.status_code == 303
    dated.registry.join_background(120)
    module = dated.get_module(1)
    assert module.status == "installed", module.error
    assert module.as_of is None and module.python_requested is None
    assert dated_version(dated, 1) == "2.0"  # the newest release: no date was given
    page = client.get("/ui/module/1").get_data(as_text=True)
    assert "asked for" not in page and "Resolved as of" not in page


@pytest.mark.parametrize(
    ("field", "value", "as_zip"),
    [("as_of", "yesterday", False), ("as_of", "2022-02-30", True),
     ("python_version", "three", True)],
)  # fmt: skip
def test_a_bad_choice_comes_back_in_its_form_naming_it_and_registers_nothing(
    service: Service, client: FlaskClient, tmp_path: Path, field: str, value: str, as_zip: bool
) -> None:
    folder = write_module(tmp_path / "m", name="Bad", code="pass")
    given = {"subdir": "", field: value}
    if as_zip:
        given["file"] = (io.BytesIO(zipped(folder)), "m.zip")  # type: ignore[assignment]
    else:
        given.update(source=str(folder), ref="v1")
    answer = client.post("/ui/register", data=given, headers=HERE)
    assert answer.status_code == 400 and answer.mimetype == "text/html"
    html = answer.get_data(as_text=True)
    message = f"{field}: {value!r}".replace("'", "&#39;")  # the API's message, escaped
    assert f'<p class="notice bad" role="alert">{message}' in html
    assert f'name="{field}" value="{value}"' in html  # what was typed is kept
    if not as_zip:
        assert f'name="source" value="{folder}"' in html and 'name="ref" value="v1"' in html
    else:
        assert "choose the archive again" in html
    assert service.list_modules(everything=True) == []
    assert not list(service.settings.uploads_dir.glob("*"))  # the upload is not kept


def test_a_failed_task_shows_why_and_its_log(service: Service, client: FlaskClient) -> None:
    module = service.register(str(DATA / "modules" / "fails"))
    task = service.run(module.id, {})
    assert service.get_task(task.id, wait=60).status == "error"
    html = client.get(f"/ui/task/{task.id}").get_data(as_text=True)
    assert "Why it failed" in html and "status 3" in html
    assert 'id="kill"' not in html and "data-live-src" not in html  # final: nothing to follow


def test_an_image_is_shown_inline_and_other_files_only_downloaded(
    service: Service, client: FlaskClient, tmp_path: Path
) -> None:
    code = (
        f"(out / 'plot.png').write_bytes(bytes.fromhex({PNG.hex()!r}))\n"
        "(out / 'page.svg').write_text('<svg onload=\"alert(1)\"/>')"
    )
    folder = write_module(tmp_path / "img", name="Pictures", code=code, output={"type": "image"})
    module = service.register(str(folder))
    task = service.run(module.id, {})
    assert service.get_task(task.id, wait=60).status == "done"
    html = client.get(f"/ui/task/{task.id}").get_data(as_text=True)
    assert f'<img class="preview-image" src="/ui/task/{task.id}/output/plot.png?inline=1"' in html
    shown = client.get(f"/ui/task/{task.id}/output/plot.png?inline=1")
    assert shown.status_code == 200 and shown.mimetype == "image/png" and shown.data == PNG
    assert "attachment" not in shown.headers.get("Content-Disposition", "")
    assert client.get(f"/ui/task/{task.id}/output/page.svg?inline=1").status_code == 400
    download = client.get(f"/ui/task/{task.id}/output/page.svg")
    assert download.headers["Content-Disposition"].startswith("attachment")


def test_the_machine_page_and_metrics_show_who_runs_tasks(
    service: Service, client: FlaskClient
) -> None:
    from orchestra.tasks import workers

    workers.register(service.db, "gpu-1", queues=["gpu"], concurrency=3, hostname="node7")
    module = service.register(str(DATA / "modules" / "sleeps"))
    service.start()
    task = service.run(module.id, {"seconds": 60})
    try:
        runner = service.get_task(task.id).worker
        assert runner and service.get_task(task.id).status == "running"
        html = client.get("/ui/machine").get_data(as_text=True)
        assert "<code>gpu-1</code>" in html and "node7" in html and "gpu" in html
        assert f"<code>{runner}</code>" in html
        text = client.get("/metrics").get_data(as_text=True)
        assert f'orchestra_worker_running{{worker="{runner}"}} 1.0' in text
        assert 'orchestra_worker_running{worker="gpu-1"} 0.0' in text
        assert 'orchestra_worker_concurrency{worker="gpu-1"} 3.0' in text
        task_page = client.get(f"/ui/task/{task.id}").get_data(as_text=True)
        assert f"<dt>Worker</dt><dd>{runner}</dd>" in task_page
    finally:
        service.kill(task.id)
