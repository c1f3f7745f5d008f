"""A package index on 127.0.0.1 for tests: the simple repository API, HTML and JSON.

It serves the files given to it (source archives, wheels) under ``/simple/<project>/`` in
both forms uv reads: PEP 503's HTML and PEP 691's JSON, the latter with PEP 700's
``upload-time`` per file, which uv's ``--exclude-newer`` needs. Each file's upload time is
the one it was added with. Source archives are built here from a few files of text.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_FOREVER = "max-age=365000000, immutable, public"


def normalize(name: str) -> str:
    """A project's normalised name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class PackageIndex:
    """Files by project, each with its upload time; ``url`` once served."""

    folder: Path
    url: str = ""
    files: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)

    def add(self, path: Path, project: str, uploaded: datetime | None = None) -> None:
        """Publish ``path`` (already in ``folder``) as a file of ``project``."""
        when = uploaded or datetime.now(UTC)
        self.files.setdefault(normalize(project), []).append((path.name, when))

    def add_sdist(
        self, name: str, version: str, files: Mapping[str, str], uploaded: datetime | None = None
    ) -> Path:
        """Build ``name-version.tar.gz`` from ``files`` (path -> text) and publish it."""
        base = f"{name.replace('-', '_')}-{version}"
        archive = self.folder / f"{base}.tar.gz"
        pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        with tarfile.open(archive, "w:gz") as tar:
            for relative, text in {"PKG-INFO": pkg_info, **files}.items():
                data = text.encode()
                member = tarfile.TarInfo(f"{base}/{relative}")
                member.size = len(data)
                member.mtime = 1_600_000_000
                tar.addfile(member, io.BytesIO(data))
        self.add(archive, name, uploaded)
        return archive

    def page(self, project: str) -> dict[str, object] | None:
        """The JSON page of ``project`` (PEP 691, API 1.1), or None when unknown."""
        entries = self.files.get(normalize(project))
        if entries is None:
            return None
        files = []
        for filename, when in entries:
            digest = hashlib.sha256((self.folder / filename).read_bytes()).hexdigest()
            files.append({
                "filename": filename,
                "url": f"{self.url}/files/{filename}",
                "hashes": {"sha256": digest},
                "upload-time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            })  # fmt: skip
        return {"meta": {"api-version": "1.1"}, "name": normalize(project), "files": files}


def _html(page: dict[str, object]) -> str:
    links = "".join(
        f'<a href="{f["url"]}#sha256={f["hashes"]["sha256"]}">{f["filename"]}</a>\n'
        for f in page["files"]  # type: ignore[attr-defined]
    )
    return f"<!DOCTYPE html><html><body>{links}</body></html>"


def _handler(index: PackageIndex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "files" and "/" not in parts[1]:
                path = index.folder / parts[1]
                if path.is_file():
                    # as PyPI: a file never changes, so uv's cache may keep what it built
                    return self._send(path.read_bytes(), "application/octet-stream", _FOREVER)
            if len(parts) == 2 and parts[0] == "simple":
                page = index.page(parts[1])
                if page is not None:
                    if JSON_TYPE in self.headers.get("Accept", ""):
                        return self._send(json.dumps(page).encode(), JSON_TYPE)
                    return self._send(_html(page).encode(), "text/html")
            self.send_error(404)

        def _send(self, body: bytes, kind: str, cache: str = "no-cache") -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", cache)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests' output stays readable

    return Handler


@contextlib.contextmanager
def serving(folder: Path, host: str = "127.0.0.1") -> Iterator[PackageIndex]:
    """An empty index of files in ``folder``, served on ``host`` (a free port) meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    index = PackageIndex(folder)
    server = ThreadingHTTPServer((host, 0), _handler(index))
    index.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    """An empty package index served on 127.0.0.1 for one test."""
    with serving(tmp_path_factory.mktemp("index")) as index:
        yield index


# an in-tree build backend (PEP 517) that needs nothing from an index: it writes the wheel
# itself, compiling the C files it is given with the machine's gcc
BACKEND = """
import base64, hashlib, os, subprocess, sys, sysconfig, zipfile

NAME, VERSION, PY_FILES, C_MODULES = {name!r}, {version!r}, {py_files!r}, {c_modules!r}


def _tag():
    if not C_MODULES:
        return "py3-none-any", "true"
    abi = "cp%d%d" % sys.version_info[:2]
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return abi + "-" + abi + "-" + plat, "false"


def _compiled(module, folder):
    target = os.path.join(folder, module + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-shared", "-fPIC", "-I" + include, module + ".c", "-o", target],
                   check=True)
    with open(target, "rb") as handle:
        return os.path.basename(target), handle.read()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    tag, pure = _tag()
    dist = NAME.replace("-", "_") + "-" + VERSION
    info = dist + ".dist-info/"
    files = [(path, open(path, "rb").read()) for path in PY_FILES]
    files += [_compiled(module, wheel_directory) for module in C_MODULES]
    files += [
        (info + "METADATA", ("Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n"
                             % (NAME, VERSION)).encode()),
        (info + "WHEEL", ("Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: %s\\n"
                          "Tag: %s\\n" % (pure, tag)).encode()),
    ]
    name = dist + "-" + tag + ".whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append("%s,sha256=%s,%d" % (path, digest.decode(), len(data)))
            wheel.writestr(path, data)
        wheel.writestr(info + "RECORD", "\\n".join(record + [info + "RECORD,,"]) + "\\n")
    return name
"""
PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "{name}"
version = "{version}"
"""


def backend_files(
    name: str, version: str, sources: Mapping[str, str], backend: str = BACKEND
) -> dict[str, str]:
    """An sdist's files: ``sources`` (``*.py`` copied, ``*.c`` compiled) and its backend."""
    py_files = [path for path in sources if path.endswith(".py")]
    c_modules = [path[:-2] for path in sources if path.endswith(".c")]
    text = backend.format(name=name, version=version, py_files=py_files, c_modules=c_modules)
    pyproject = PYPROJECT.format(name=name, version=version)
    return {**sources, "backend.py": text, "pyproject.toml": pyproject}
