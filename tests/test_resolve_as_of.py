"""Old modules resolved as of their date: install.resolve_as_of, --as-of, as_of; --python.

The loopback index publishes upload times (PEP 700), which uv's ``--exclude-newer`` reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.config import Settings, load_settings
from orchestra.errors import InvalidInput, InvalidMetadata
from orchestra.service import Service
from tests.support.gitserver import make_repo
from tests.support.helpers import run_cli, wait_for, write_module
from tests.support.pypi import PackageIndex, backend_files

if TYPE_CHECKING:
    from flask.testing import FlaskClient

OLD, NEW = datetime(2020, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)


def publish_dated(index: PackageIndex) -> None:
    """``dated`` 1.0 uploaded in 2020 and 2.0 in 2024, as source archives."""
    for version, when in (("1.0", OLD), ("2.0", NEW)):
        files = backend_files("dated", version, {"dated.py": f"VERSION = {version!r}\n"})
        index.add_sdist("dated", version, files, uploaded=when)


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path, package_index: PackageIndex) -> Settings:
    """Requirements from the loopback index, which holds two dated releases."""
    publish_dated(package_index)
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache),
         "index_url": package_index.url + "/simple"},
        environ={},
    )  # fmt: skip


def dated_module(folder: Path, name: str, **install: Any) -> Path:
    """A module requiring ``dated``; ``install`` adds keys to its metadata's install."""
    write_module(folder, name=name, code="pass")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["install"].update(requirements=["dated"], **install)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def dated_version(service: Service, module_id: int) -> str:
    """The version of ``dated`` in the module's lock."""
    lock = service.get_module(module_id).lock or {}
    (pin,) = [p for p in lock["packages"] if p.startswith("dated==")]
    return str(pin.split("==")[1])


def test_a_module_resolved_as_of_a_date_gets_the_release_of_then(
    service: Service, tmp_path: Path
) -> None:
    old = service.register(str(dated_module(tmp_path / "a", "Old", resolve_as_of="2022-06-01")))
    new = service.register(str(dated_module(tmp_path / "b", "New")))
    assert dated_version(service, old.id) == "1.0"
    assert dated_version(service, new.id) == "2.0"
    assert old.lock["exclude_newer"] == "2022-06-01T23:59:59Z"  # type: ignore[index]
    assert "resolved as of 2022-06-01T23:59:59Z" in old.install_log


def test_commit_takes_the_date_of_the_registered_commit_and_updates_keep_it(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    dated_module(repo, "From git")
    make_repo(repo, {}, date="2021-05-04T12:00:00+02:00")
    code, out, err = run_cli(["register", f"file://{repo}", "--as-of", "commit"], settings)
    assert code == 0, err
    module_id = int(out.split("registered module ")[1].split()[0])
    module = service.get_module(module_id)
    assert module.as_of == "commit"
    assert module.lock["exclude_newer"] == "2021-05-04T10:00:00Z"  # type: ignore[index]
    assert dated_version(service, module_id) == "1.0"
    # a later commit, still before 2.0: the update resolves as of it, as registered
    make_repo(repo, {"README": "later\n"}, date="2023-01-01T00:00:00+00:00")
    updated = service.update(module_id)
    assert updated.as_of == "commit" and dated_version(service, module_id) == "1.0"
    assert updated.lock["exclude_newer"] == "2023-01-01T00:00:00Z"  # type: ignore[index]
    code, out, _ = run_cli(["show", str(module_id)], settings)
    assert code == 0 and "commit (2023-01-01T00:00:00Z)" in out, out


def test_commit_needs_a_git_source(service: Service, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match='"commit" needs a git source') as raised:
        service.register(str(dated_module(tmp_path / "m", "Folder", resolve_as_of="commit")))
    assert raised.value.key == "as_of"
    assert service.list_modules(everything=True) == []


def test_the_metadata_key_is_validated(service: Service, tmp_path: Path) -> None:
    with pytest.raises(InvalidMetadata, match="install.resolve_as_of: '2022-02-30'"):
        service.register(str(dated_module(tmp_path / "m", "Bad", resolve_as_of="2022-02-30")))


def test_the_api_records_as_of_and_python_and_shows_them(
    client: FlaskClient, tmp_path: Path
) -> None:
    body = {"source": str(dated_module(tmp_path / "m", "Api")), "as_of": "2022-06-01",
            "python_version": "3.11"}  # fmt: skip
    answer = client.post("/modules", json=body)
    assert answer.status_code == 202, answer.get_json()
    module_id = answer.get_json()["id"]
    record = wait_for(
        lambda: client.get(f"/module/{module_id}").get_json(),
        lambda m: m["status"] != "installing", timeout=120, what="the installation",
    )  # fmt: skip
    assert record["status"] == "installed", record["error"]
    assert record["as_of"] == "2022-06-01" and record["python_requested"] == "3.11"
    assert record["python_version"].startswith("3.11.")
    assert "dated==1.0" in record["lock"]["packages"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("as_of", "yesterday"), ("as_of", "2022-13-01"), ("python_version", "three")],
)
def test_a_bad_value_is_a_400_naming_it(
    client: FlaskClient, service: Service, tmp_path: Path, field: str, value: str
) -> None:
    body = {"source": str(dated_module(tmp_path / "m", "Bad")), field: value}
    answer = client.post("/modules", json=body)
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith(f"{field}: {value!r}")
    assert service.list_modules(everything=True) == []


def test_the_command_line_refuses_a_bad_value_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    folder = str(dated_module(tmp_path / "m", "Bad"))
    code, _, err = run_cli(["register", folder, "--as-of", "last year"], settings)
    assert code != 0 and "as_of: 'last year'" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["register", folder, "--python", "3.99"], settings)
    assert code != 0 and "3.99" in err and "Traceback" not in err, err


def test_the_module_s_own_keys_win_over_the_operator_s(service: Service, tmp_path: Path) -> None:
    folder = dated_module(tmp_path / "m", "Says", resolve_as_of="2022-06-01")
    module = service.register(str(folder), as_of="2025-01-01")
    assert module.as_of == "2025-01-01" and dated_version(service, module.id) == "1.0"
    assert "install.resolve_as_of is 2022-06-01 in the module's metadata" in module.install_log
