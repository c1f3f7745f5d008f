"""Small tools shared by the API, server and CLI tests."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestra.config import Settings

FINAL_TASK = {"done", "error", "killed"}
FINAL_MODULE = {"installed", "error"}


def clean_environ() -> dict[str, str]:
    """This process's environment without the caller's ORCHESTRA_* settings, for a child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}


def make_token(database_url: str, name: str, role: str = "worker") -> str:
    """A new token of ``role`` made straight in a database (as ``orchestra token create``)."""
    from orchestra.access.tokens import TokenStore
    from orchestra.storage.db import Database

    db = Database(database_url)
    try:
        db.create_schema()
        return TokenStore(db).create(name, role).token
    finally:
        db.dispose()


def run_cli(argv: Sequence[str], settings: Settings | None = None) -> tuple[int, str, str]:
    """Run the command line in this process; returns (exit code, stdout, stderr)."""
    from orchestra.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv), settings=settings)
    return code, out.getvalue(), err.getvalue()


def wait_for(
    probe: Callable[[], Any], done: Callable[[Any], bool], *, timeout: float, what: str
) -> Any:
    """Call ``probe`` until ``done(result)``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {result!r} after {timeout} s")
        time.sleep(0.05)


def wait_for_status(
    fetch: Callable[[], dict[str, Any]], statuses: set[str], *, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll a record (a dict with ``status``) until its status is one of ``statuses``."""
    return wait_for(  # type: ignore[no-any-return]
        fetch, lambda record: record["status"] in statuses, timeout=timeout, what="status"
    )


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Wait until ``port`` on 127.0.0.1 accepts connections; fail if ``process`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


@dataclass
class Answer:
    """An HTTP answer read by ``http``."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One real HTTP request with the standard library; error statuses are answers too."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())


def write_module(
    folder: Path,
    *,
    name: str,
    code: str,
    args: list[Any] | None = None,
    output: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A tiny module without requirements: ``code`` is the body of its ``main(out, args)``.

    ``extra`` adds (or replaces) top-level metadata keys.
    """
    metadata = {
        "name": name,
        "description": f"test module {name}",
        "version": "0.1",
        "args": args if args is not None else ["start", "stop"],
        "defaults": defaults or {},
        "output": output or {"type": "files"},
        "install": {"executable": "tinymod", "files": ["tinymod"]},
        **(extra or {}),
    }
    package = folder / "tinymod"
    package.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (package / "__init__.py").write_text("")
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    main = (
        "import argparse, pathlib, sys, time\n\n"
        f"def main(out, args):\n{body}\n\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('out')\n"
        "known, rest = parser.parse_known_args()\n"
        "pairs = dict(zip(rest[::2], rest[1::2]))\n"
        "main(pathlib.Path(known.out), {k.lstrip('-'): v for k, v in pairs.items()})\n"
    )
    (package / "__main__.py").write_text(main)
    return folder


def zipped(folder: Path) -> bytes:
    """A zip archive of ``folder``'s files (bytecode caches left out), as a module is uploaded."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
