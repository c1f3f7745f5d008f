"""The dashboard's trainings and model versions: pages through the test client, and the whole
cycle in a real browser (Debian's Chromium) against a real server and the example module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.service import Service
from tests.support.browser import Visit, visit
from tests.support.paths import ROOT
from tests.support.server import LiveServer

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from playwright.sync_api import Browser

EXAMPLE = ROOT / "examples" / "trainable"
HOSTILE = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


def _hostile_example(tmp_path: Path) -> Path:
    """The example, its training writing a metric whose name is markup."""
    folder = tmp_path / "trainable"
    shutil.copytree(EXAMPLE, folder)
    train = folder / "threshold" / "train.py"
    text = train.read_text().replace(
        '{"loss": loss, "accuracy": accuracy}', '{"loss": loss, "accuracy": accuracy, NAME: 1.5}'
    )
    text = text.replace("from threshold.data import samples\n",
                        f"from threshold.data import samples\n\nNAME = {HOSTILE!r}\n")  # fmt: skip
    train.write_text(text)
    return folder


def test_a_trainable_modules_page_lists_versions_and_escapes_metric_names(
    service: Service, client: FlaskClient, tmp_path: Path
) -> None:
    module = service.register(str(_hostile_example(tmp_path))).id
    page = client.get(f"/ui/module/{module}").get_data(as_text=True)
    assert "No version yet" in page and 'id="train-form"' in page
    task = service.train(module, {"epochs": 2})
    assert service.get_task(task.id, wait=60).status == "done"
    page = client.get(f"/ui/module/{module}").get_data(as_text=True)
    assert HOSTILE not in page and "&lt;script&gt;window.pwned" in page
    assert '<tr data-version="1">' in page and '<span class="badge alias">default</span>' in page
    assert '<option value="@default">@default (version 1)</option>' in page
    metrics = client.get(f"/ui/task/{task.id}/metrics").get_json()
    assert metrics["final"][HOSTILE] == 1.5 and len(metrics["steps"]) == 2
    task_page = client.get(f"/ui/task/{task.id}").get_data(as_text=True)
    assert 'data-metrics-src="/ui/task/' in task_page and "made version 1" in task_page


@pytest.fixture
def tab(browser: Browser, live_server: LiveServer, tmp_path: Path) -> Iterator[Visit]:
    """A fresh browser tab on the live server; afterwards, no request left its origin."""
    with visit(browser, live_server.url, tmp_path / "screenshots") as opened:
        yield opened
        assert opened.foreign_requests() == []
        assert opened.dialogs == []


@pytest.mark.slow
def test_train_from_the_form_watch_the_curve_promote_and_run_a_chosen_version(
    tab: Visit, live_server: LiveServer
) -> None:
    module = live_server.service.register(str(EXAMPLE)).id
    page = tab.page
    tab.go(f"/ui/module/{module}")
    page.fill("#train-form input[name=epochs]", "3")
    page.click("#train-form button[type=submit]")
    page.locator(".page-head .badge.done").wait_for(timeout=60_000)
    tab.go(f"/ui/module/{module}")
    page.fill("#train-form input[name=epochs]", "60")
    page.fill("#train-form input[name=step_seconds]", "0.1")
    page.click("#train-form button[type=submit]")
    assert "/ui/task/" in page.url
    curve = page.locator("#curves")
    page.wait_for_function(
        "() => Number(document.querySelector('#curves')?.dataset.steps || 0) >= 3",
        timeout=30_000,
    )
    early = int(curve.get_attribute("data-steps") or 0)
    page.wait_for_function(
        f"() => Number(document.querySelector('#curves')?.dataset.steps || 0) > {early}",
        timeout=30_000,
    )  # the curve grows while the training runs, without a reload
    assert page.locator(".page-head .badge.running").count() == 1
    assert page.locator("#curves svg polyline").count() >= 2  # loss and accuracy
    tab.screenshot("training-curves")
    page.locator(".page-head .badge.done").wait_for(timeout=60_000)
    tab.go(f"/ui/module/{module}")
    assert page.locator("table.versions tbody tr").count() == 2
    assert page.locator("table.versions thead th").all_text_contents()[2:4] == [
        "accuracy",
        "loss",
    ]
    page.fill("#alias-form input[name=name]", "default")
    page.select_option("#alias-form select[name=version]", "2")
    page.click("#alias-form button[type=submit]")
    row = page.locator('table.versions tr[data-version="2"]')
    assert "default" in row.inner_text()
    tab.screenshot("versions")
    page.select_option("#run-model", "1")
    page.click(".run-form:not(#train-form) button[type=submit]")
    page.locator(".page-head .badge.done").wait_for(timeout=60_000)
    task_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    assert live_server.service.get_task(task_id).model["version"] == 1  # type: ignore[index]
    aliases = live_server.service.aliases(module)
    assert [(m.to, m.by) for m in aliases.history][-1] == (2, "anonymous")  # no token here
    assert json.loads(page.evaluate("JSON.stringify(window.pwned || null)")) is None
