"""Orchestra's API server run for real: in this process (LiveServer) or as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.helpers import Answer, clean_environ, free_port, http, wait_for
from tests.support.paths import ROOT

if TYPE_CHECKING:
    from orchestra.api.server import ApiServer
    from orchestra.service import Service


class LiveServer:
    """A real waitress server on a free loopback port."""

    def __init__(self, url: str, service: Service, api: ApiServer | None = None) -> None:
        self.url = url
        self.service = service
        self.api = api  # the server itself, for what only it can tell (parked requests)


@contextmanager
def serve_in_thread(service: Service) -> Iterator[LiveServer]:
    """``service`` served by waitress on a free loopback port, with its task runner started."""
    import threading
    import urllib.request

    from orchestra.api.server import ApiServer

    server = ApiServer(service.settings.with_overrides(host="127.0.0.1", port=0), service)
    service.start()
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as answer:
            assert answer.status == 200
        yield LiveServer(url, service, server)
    finally:
        server.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the live server did not stop"


class ApiCalls:
    """What tests do through a running API: register a module, run it, read a task."""

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Answer:
        """One JSON request to the API."""
        raise NotImplementedError

    def register(self, folder: Path, timeout: float = 180) -> int:
        """Register a module folder and wait until it is installed; its id."""
        answer = self.call("POST", "/modules", {"source": str(folder)})
        assert answer.status == 202, answer.body
        module_id = int(answer.json()["id"])
        module = wait_for(
            lambda: self.call("GET", f"/module/{module_id}").json(),
            lambda m: m["status"] != "installing", timeout=timeout, what="the installation",
        )  # fmt: skip
        assert module["status"] == "installed", module.get("error")
        return module_id

    def run(self, module_id: int, **args: Any) -> int:
        """Start a task; its id."""
        answer = self.call("POST", f"/module/{module_id}/run", args)
        assert answer.status == 202, answer.body
        return int(answer.json()["task"])

    def task(self, task_id: int) -> dict[str, Any]:
        """A task's record."""
        return dict(self.call("GET", f"/task/{task_id}").json())


class ServerProcess(ApiCalls):
    """``python -m orchestra serve`` on one data folder; may be stopped and started again."""

    def __init__(
        self, home: Path, uv_cache: Path, *, label: str = "server", **settings: str
    ) -> None:
        self.home = home
        self.label = label  # names its logs: several servers may share one data folder
        self.env = clean_environ()
        self.env.update(
            ORCHESTRA_HOME=str(home), ORCHESTRA_UV_CACHE=str(uv_cache),
            ORCHESTRA_POLL_INTERVAL="0.2", PYTHONPATH=str(ROOT / "src"),
        )  # fmt: skip
        self.env.update({f"ORCHESTRA_{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        """Start a server and wait until it answers /health."""
        port = free_port()
        self.starts += 1
        log = (self.home.parent / f"{self.label}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestra", "serve", "--port", str(port)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self._answers, bool, timeout=30, what="the server's /health")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited early:\n{self.log()}")
        try:
            # 401 counts: with ORCHESTRA_PROTECT_READS even /health needs the token
            return http("GET", self.url + "/health", timeout=2).status in {200, 401}
        except OSError:
            return False

    def log(self) -> str:
        """The current server's log."""
        return (self.home.parent / f"{self.label}-{self.starts}.log").read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the server to end; its exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    @property
    def pid(self) -> int:
        """The running server's pid."""
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Answer:
        """One JSON request to the server."""
        return http(method, self.url + path, json_body=body, timeout=timeout)

    def wait_final(self, task_id: int, timeout: float = 60) -> dict[str, Any]:
        """A task's record once it has ended."""
        return dict(
            wait_for(
                lambda: self.task(task_id),
                lambda t: t["status"] in {"done", "error", "killed"},
                timeout=timeout,
                what=f"task {task_id}",
            )  # fmt: skip
        )

    def close(self) -> None:
        """Kill the server if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
