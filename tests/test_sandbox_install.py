"""Registrations in the sandbox: a source package's build sees nothing of the data folder."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.executors import sandbox
from orchestra.service import Service
from tests.support.paths import DATA
from tests.support.postgres import require_service
from tests.support.pypi import PackageIndex

STATE = sandbox.detect("auto")

# the build backend of the package: it tries its escapes while it builds, and ships what it
# found in the wheel it makes (the only thing of it that leaves the sandbox)
BACKEND = """
import base64, hashlib, json, os, zipfile

HOME = {home!r}
WHEEL = b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
OTHER = {other!r}


def _try(action):
    try:
        return "allowed: " + str(action())
    except Exception as exc:
        return "denied: " + type(exc).__name__ + ": " + str(exc)


def _report():
    return {{
        "read_database": _try(lambda: len(open(os.path.join(HOME, "orchestra.db"), "rb").read())),
        "read_other_module": _try(lambda: open(OTHER).read()[:20]),
        "list_data_folder": _try(lambda: sorted(os.listdir(HOME))),
        "plant_in_data_folder": _try(
            lambda: open(os.path.join(HOME, "planted.txt"), "w").write("planted")
        ),
    }}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "escapereport-0.1-py3-none-any.whl"
    info = "escapereport-0.1.dist-info/"
    files = [
        ("escapereport.py", ("REPORT = " + json.dumps(_report())).encode()),
        (info + "METADATA", b"Metadata-Version: 2.1\\nName: escapereport\\nVersion: 0.1\\n"),
        (info + "WHEEL", WHEEL),
    ]
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{{path}},sha256={{digest.decode()}},{{len(data)}}")
            wheel.writestr(path, data)
        wheel.writestr(info + "RECORD", "\\n".join(record + [info + "RECORD,,"]) + "\\n")
    return name
"""
PKG_INFO = "Metadata-Version: 2.1\nName: escapereport\nVersion: 0.1\n"
PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "escapereport"
version = "0.1"
"""


@pytest.fixture(params=["file", "index"])
def origin(request: pytest.FixtureRequest, package_index: PackageIndex) -> PackageIndex | None:
    """Where the package comes from: a file named by the requirement, or a package index.

    uv treats the two differently once the wheel is built (it takes a wheel it built from a
    file when building is disabled, not one from an index's archive): both must pass.
    """
    return package_index if request.param == "index" else None


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path, origin: PackageIndex | None) -> Settings:
    """Requirements may name a file (the package's source archive), or come from the index."""
    index_url = origin.url + "/simple" if origin is not None else None
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "allow_requirement_options": True,
         "index_url": index_url},
        environ={},
    )  # fmt: skip


def _sdist(folder: Path, backend: str) -> Path:
    archive = folder / "escapereport-0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in (
            ("pyproject.toml", PYPROJECT),
            ("backend.py", backend),
            ("PKG-INFO", PKG_INFO),
        ):
            data = text.encode()
            member = tarfile.TarInfo(f"escapereport-0.1/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return archive


def test_a_source_package_is_built_in_the_sandbox(
    service: Service, settings: Settings, tmp_path: Path, origin: PackageIndex | None
) -> None:
    if not STATE.active:
        require_service("the task sandbox", STATE.detail)
    other = service.register(str(DATA / "modules" / "echo"))
    other_code = next(settings.installs_dir.glob("*/code/tinymod/__main__.py"), None) or next(
        settings.installs_dir.glob("*/code/*/*.py")
    )
    backend = textwrap.dedent(BACKEND).format(home=str(settings.home), other=str(other_code))
    archive = _sdist(origin.folder if origin is not None else tmp_path, backend)
    if origin is not None:
        origin.add(archive, "escapereport")
    module = tmp_path / "module"
    module.mkdir()
    for path in (DATA / "modules" / "echo").rglob("*"):
        target = module / path.relative_to(DATA / "modules" / "echo")
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    metadata = json.loads((module / "metadata.json").read_text())
    metadata["name"] = "Echo with a source package"
    direct = f"escapereport @ file://{archive}"
    metadata["install"]["requirements"] = ["escapereport" if origin is not None else direct]
    (module / "metadata.json").write_text(json.dumps(metadata))
    built = service.register(str(module))
    assert built.status == "installed" and built.id != other.id
    found = list(settings.installs_dir.glob("*/env/lib/python*/site-packages/escapereport.py"))
    assert len(found) == 1, found
    report = json.loads(found[0].read_text().removeprefix("REPORT = "))
    print(json.dumps(report, indent=1))
    assert report["read_database"].startswith("denied"), report
    assert report["read_other_module"].startswith("denied"), report
    listing = report["list_data_folder"]
    assert "orchestra.db" not in listing and "installs" not in listing, listing
    assert not (settings.home / "planted.txt").exists()
    assert "building it in the sandbox" in (built.install_log or "")
