"""The dashboard in a real browser (Debian's Chromium) against a real server and real modules.

Every test also checks that no request left the server's origin, and saves screenshots of
the pages it visits at laptop and phone sizes under ``<basetemp>/screenshots/``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.config import Settings
from orchestra.service import Service
from tests.support.browser import Visit, other_origin, visit
from tests.support.helpers import write_module, zipped
from tests.support.paths import DATA, EXAMPLES
from tests.support.server import LiveServer, serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow
TOKEN = "dashboard-Tökén"
PYTHON = "{}.{}".format(*sys.version_info[:2])  # the running one: registering with it is quick
HOSTILE = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2; alert(2)">'


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``screenshots/`` in pytest's base temporary folder."""
    return tmp_path_factory.getbasetemp() / "screenshots"


@pytest.fixture
def tab(browser: Browser, live_server: LiveServer, shots: Path) -> Iterator[Visit]:
    """A fresh browser tab on the live server; afterwards, no request left its origin."""
    with visit(browser, live_server.url, shots) as opened:
        yield opened
        assert opened.foreign_requests() == []
        assert opened.dialogs == []


def _status(tab: Visit, status: str, timeout: float = 120_000) -> None:
    tab.page.locator(f".page-head .badge.{status}").wait_for(timeout=timeout)


def test_register_a_zip_watch_it_install_run_it_and_download_its_output(
    tab: Visit, live_server: LiveServer, tmp_path: Path
) -> None:
    archive = tmp_path / "catalog.zip"
    archive.write_bytes(zipped(EXAMPLES / "catalog"))
    tab.go("/ui/register")
    tab.screenshot("register")
    tab.page.set_input_files("#zip-form input[type=file]", str(archive))
    tab.page.fill("#zip-form input[name=python_version]", PYTHON)
    tab.page.click("#zip-form button[type=submit]")
    _status(tab, "installed")  # the module's page follows the install by itself
    assert "/ui/module/" in tab.page.url
    assert live_server.service.get_module(1).python_requested == PYTHON
    tab.page.fill("input[name=parameter]", "imf_bx")
    tab.page.fill("input[name=spacing_hours]", "4")
    tab.page.click(".run-form button[type=submit]")
    _status(tab, "done")  # the task's page follows the task without a reload
    table = tab.page.locator("table.data")
    assert table.locator("th").all_text_contents() == ["start", "stop", "parameter", "score"]
    assert table.locator("tbody tr").count() == 6  # one event every 4 hours in a day
    assert "imf_bx" in table.locator("tbody").inner_text()
    assert tab.page.locator(".timeline rect.span").count() == 6
    tab.screenshot("task-catalog")
    with tab.page.expect_download() as download:
        tab.page.click(".output-head a[download]")
    saved = Path(download.value.path())
    task_id = int(tab.page.url.rsplit("/", 1)[1])
    [(_, produced)] = live_server.service.task_outputs(task_id)
    assert saved.read_bytes() == produced.read_bytes()
    tab.go("/ui/")
    tab.screenshot("modules")
    tab.go(f"/ui/module/{live_server.service.list_modules()[0].id}")
    tab.screenshot("module")


def test_a_time_series_is_plotted_and_zooms(tab: Visit, live_server: LiveServer) -> None:
    svc = live_server.service
    module = svc.register(str(EXAMPLES / "timeseries"))
    task = svc.run(module.id, {"stop": "2020-01-01T03:00:00"})
    svc.get_task(task.id, wait=60)
    tab.go(f"/ui/task/{task.id}")
    plot = tab.page.locator("figure[data-plot]")
    plot.locator("svg polyline.line").first.wait_for()
    assert plot.locator(".legend .key").all_inner_texts() == ["value"]
    box = plot.locator("svg").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    tab.page.mouse.move(box["x"] + box["width"] * 0.3, y)
    tab.page.mouse.down()
    tab.page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    tab.page.mouse.up()
    start, stop = map(float, plot.get_attribute("data-view").split(","))  # type: ignore[union-attr]
    assert 0 < stop - start < 3 * 3600 * 1000 * 0.5  # zoomed in from three hours
    tab.screenshot("task-timeseries")
    tab.go("/ui/tasks")
    tab.screenshot("tasks")
    tab.go("/ui/machine")
    assert "Example time series" in tab.page.locator("main").inner_text()
    tab.screenshot("machine")


def test_a_long_task_is_killed_from_its_page(tab: Visit, live_server: LiveServer) -> None:
    svc = live_server.service
    module = svc.register(str(DATA / "modules" / "sleeps"))
    task = svc.run(module.id, {"seconds": 120})
    tab.go(f"/ui/task/{task.id}")
    _status(tab, "running")
    tab.screenshot("task-running")
    tab.page.click("#kill")
    _status(tab, "killed", timeout=30_000)
    assert svc.get_task(task.id).status == "killed"


def test_the_task_list_updates_itself(tab: Visit, live_server: LiveServer) -> None:
    svc = live_server.service
    module = svc.register(str(DATA / "modules" / "sleeps"))
    tab.go("/ui/tasks")
    task = svc.run(module.id, {"seconds": 1})
    row = tab.page.locator(f"table.tasks tr:has(a[href='/ui/task/{task.id}'])")
    row.locator(".badge.done").wait_for(timeout=60_000)  # appeared, then finished, no reload


def test_what_a_module_author_writes_runs_nothing(
    tab: Visit, live_server: LiveServer, tmp_path: Path
) -> None:
    folder = write_module(
        tmp_path / "hostile",
        name=f"Hostile {HOSTILE}",
        code=f"print({HOSTILE!r})\n(out / 'table.csv').write_text('start,stop,note\\n'"
        f" '2020-01-01T00:00:00,2020-01-01T01:00:00,' + {HOSTILE!r} + '\\n')",
    )
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["description"] = f"Looks *fine*. {HOSTILE} [link](javascript:alert(3))"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    svc = live_server.service
    module = svc.register(str(folder))
    task = svc.run(module.id, {})
    svc.get_task(task.id, wait=60)
    for path in ("/ui/", f"/ui/module/{module.id}", f"/ui/task/{task.id}", "/ui/tasks"):
        tab.go(path)
        tab.page.wait_for_load_state("networkidle")
        assert tab.page.evaluate("window.pwned") is None, path
        assert tab.page.locator("main img").count() == 0, path
    assert HOSTILE in tab.page.content().replace("&lt;", "<").replace("&gt;", ">")
    tab.go(f"/ui/module/{module.id}")
    assert tab.page.locator(".description em").inner_text() == "fine"
    assert tab.page.locator(".description a[href^='javascript']").count() == 0


@pytest.fixture
def guarded(settings: Settings) -> Iterator[LiveServer]:
    """A live server whose changes need the token, with the catalog example installed."""
    service = Service(settings.with_overrides(api_token=TOKEN))
    try:
        service.register(str(EXAMPLES / "catalog"))
        with serve_in_thread(service) as server:
            yield server
    finally:
        service.close()


def test_with_a_token_changes_need_sign_in_and_the_same_origin(
    browser: Browser,
    guarded: LiveServer,
    shots: Path,
) -> None:
    svc = guarded.service
    with visit(browser, guarded.url, shots) as tab:
        tab.go("/ui/module/1")
        # before signing in, no role: the run form is not offered
        assert tab.page.locator(".run-form").count() == 0
        assert svc.list_tasks().total == 0
        tab.screenshot("refused")
        tab.page.click(".who a:has-text('Sign in')")
        tab.screenshot("signin")
        tab.page.fill("input[name=token]", TOKEN)
        tab.page.click("form.stack button[type=submit]")
        assert tab.page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        tab.go("/ui/module/1")
        tab.page.click(".run-form button[type=submit]")
        _status(tab, "done")
        assert svc.list_tasks().total == 1
        form = (
            f'<form method="post" action="{guarded.url}/ui/module/1/run">'
            '<input name="parameter" value="forged"></form>'
            "<script>document.forms[0].submit()</script>"
        )
        with other_origin(form) as elsewhere:
            tab.page.goto(elsewhere)
            tab.page.wait_for_url(f"{guarded.url}/ui/module/1/run")
            assert tab.page.locator("h1").first.inner_text().startswith("Refused")
            assert tab.foreign_requests() == [elsewhere]
        assert svc.list_tasks().total == 1
        assert tab.dialogs == []


def test_the_api_documentation_is_served_locally(tab: Visit) -> None:
    tab.go("/docs")
    tab.page.locator(".swagger-ui .opblock").first.wait_for()
    assert tab.page.locator(".swagger-ui .opblock").count() > 10
    tab.screenshot("docs")
    tab.go("/ui/module/999")
    tab.screenshot("not-found")


def test_the_root_sends_a_browser_to_the_dashboard(tab: Visit) -> None:
    tab.go("/")
    assert tab.page.url.endswith("/ui/")
    assert tab.page.locator("h1").inner_text() == "Modules"


def test_every_page_reads_without_javascript(
    browser: Browser,
    live_server: LiveServer,
    shots: Path,
) -> None:
    svc = live_server.service
    module = svc.register(str(EXAMPLES / "catalog"))
    task = svc.run(module.id, {})
    svc.get_task(task.id, wait=60)
    with visit(browser, live_server.url, shots, javascript=False) as tab:
        tab.go("/ui/")
        assert tab.page.locator(".module-card h2").inner_text() == "Example catalog"
        tab.go(f"/ui/module/{module.id}")
        assert tab.page.locator(".run-form input[name=parameter]").input_value() == "imf_bz"
        tab.go("/ui/tasks")
        assert tab.page.locator("table.tasks .badge.done").count() == 1
        tab.go(f"/ui/task/{task.id}")
        assert tab.page.locator("table.data tbody tr").count() == 4
        tab.go(f"/ui/module/{module.id}")
        tab.page.click(".run-form button[type=submit]")  # a plain form post, then a redirect
        assert tab.page.url.endswith(f"/ui/task/{task.id + 1}")
        assert tab.foreign_requests() == []
