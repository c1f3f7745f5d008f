"""Debian's Chromium driven by Playwright, headless, with every request recorded.

Playwright never downloads a browser here: it launches /usr/bin/chromium (PITFALLS #18).
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.postgres import require_service

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-background-networking",  # without these the closed network floods it
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole run."""
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=FLAGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Visit:
    """A browser tab on one server, recording its requests and any dialog a page opens."""

    page: Page
    context: BrowserContext
    base: str
    shots: Path
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        """Open ``path`` on the server and return the answer."""
        return self.page.goto(self.base + path)

    def foreign_requests(self, *allowed: str) -> list[str]:
        """Requests to any origin other than the server's (and the ``allowed`` ones)."""
        origins = {_origin(self.base), *(_origin(a) for a in allowed)}
        return [url for url in self.requests if _origin(url) not in origins]

    def screenshot(self, name: str) -> None:
        """Full-page screenshots at laptop and phone sizes, saved under ``screenshots/``."""
        self.shots.mkdir(parents=True, exist_ok=True)
        for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            self.page.wait_for_timeout(150)  # one layout pass after the resize (plots redraw)
            self.page.screenshot(path=str(self.shots / f"{name}-{label}.png"), full_page=True)
        self.page.set_viewport_size(LAPTOP)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in {"data", "blob", "about"}:
        return "local:"
    return f"{parts.scheme}://{parts.netloc}"


@contextmanager
def visit(browser: Browser, base: str, shots: Path, *, javascript: bool = True) -> Iterator[Visit]:
    """A fresh browser context (no cookies) on ``base``; dialogs are recorded and dismissed."""
    context = browser.new_context(
        viewport=LAPTOP, accept_downloads=True, java_script_enabled=javascript
    )
    context.set_default_timeout(30_000)
    page = context.new_page()
    tab = Visit(page, context, base.rstrip("/"), shots)
    page.on("request", lambda request: tab.requests.append(request.url))
    page.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield tab
    finally:
        context.close()


class _OnePage(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def other_origin(html: str) -> Iterator[str]:
    """A second tiny server on another port of 127.0.0.1 serving ``html``; yields its URL."""
    handler = type("Page", (_OnePage,), {"body": html.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="other-origin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
