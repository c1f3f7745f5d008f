"""The registry with real sources, real uv environments and a real database."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.config import Settings
from orchestra.errors import InstallError, InvalidInput, InvalidMetadata, NotFound, WrongState
from orchestra.records import ModuleInfo
from orchestra.registry import Registry
from orchestra.sources import SourceSpec
from orchestra.storage.db import Database
from orchestra.storage.files import InstallFolder
from orchestra.storage.tables import ModuleRow
from tests.support.gitserver import GitDaemon, git, make_repo
from tests.support.paths import EXAMPLES


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.create_schema()
    reg = Registry(settings, db)
    try:
        yield reg
    finally:
        reg.join_background(timeout=120)
        db.dispose()


def make_module(
    folder: Path,
    *,
    name: str = "tiny",
    code: str = "print('hello')\n",
    install: dict[str, Any] | None = None,
    requirements: str | None = None,
    **meta: Any,
) -> Path:
    """A module folder with one main.py, its metadata and optional requirements.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(code)
    metadata = {
        "name": name,
        "description": "a test module",
        "args": [],
        "output": {"type": "timeseries"},
        "install": {"executable": "main", "files": ["main.py"], **(install or {})},
        **meta,
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def run_in(folder: InstallFolder, *args: str) -> str:
    """Run the generation's interpreter in its code folder, as a task would."""
    done = subprocess.run(
        [str(folder.python), *args], cwd=folder.code, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def assert_nothing_left(registry: Registry, settings: Settings) -> None:
    assert registry.list() == []
    for folder in (settings.installs_dir, settings.home / "tmp"):
        assert not folder.exists() or list(folder.iterdir()) == []


def test_the_timeseries_example_registers_with_numpy_and_is_listed(
    registry: Registry, tmp_path: Path
) -> None:
    messages: list[str] = []
    info = registry.registration.register(
        SourceSpec(str(EXAMPLES / "timeseries")), progress=messages.append
    )
    assert info.status == "installed" and info.name == "Example time series"
    assert info.output_type == "timeseries" and info.python_version
    assert info.source == str((EXAMPLES / "timeseries").resolve()) and info.source_kind == "folder"
    assert "numpy" in info.install_log
    assert messages[0].startswith("fetching") and messages[-1].endswith(f"module {info.id}")
    assert any(m.startswith("creating environment with Python 3.") for m in messages)
    manifest, folder = registry.runnable(info.id)
    assert manifest.executable == "timeseries"
    assert run_in(folder, "-c", "import numpy; print('ok')") == "ok"
    assert (folder.code / "timeseries.py").is_file() and folder.log.is_file()
    out = tmp_path / "out"
    argv = [
        "-m",
        "timeseries",
        str(out),
        "--start",
        "2020-01-01T00:00",
        "--stop",
        "2020-01-01T00:02",
    ]
    assert "wrote 3 points" in run_in(folder, *argv, "--amplitude", "2")
    assert (out / "timeseries.csv").read_text().splitlines()[1:] == [
        "2020-01-01T00:00:00,0.100000",
        "2020-01-01T00:01:00,0.478172",
        "2020-01-01T00:02:00,0.791221",
    ]
    summaries = registry.list()
    assert [(s.id, s.name, s.status) for s in summaries] == [(info.id, info.name, "installed")]


def test_the_catalog_example_registers_as_a_package_and_runs(
    registry: Registry, tmp_path: Path
) -> None:
    info = registry.registration.register(SourceSpec(str(EXAMPLES / "catalog")))
    shown = registry.get(info.id)
    assert shown.output_type == "catalog" and shown.metadata
    assert shown.metadata["install"]["executable"] == "Model"
    _, folder = registry.runnable(info.id)
    out = tmp_path / "out"
    argv = ["-m", "Model", str(out), "--start", "2020-01-01T00:00:00"]
    argv += ["--stop", "2020-01-01T12:00:00", "--parameter", "bx"]
    assert "found 2 events of bx" in run_in(folder, *argv)
    rows = (out / "catalog.txt").read_text().splitlines()
    assert rows[0] == "# start stop parameter score" and len(rows) == 3


def test_remove_deletes_the_record_files_and_environment(
    registry: Registry, settings: Settings
) -> None:
    info = registry.registration.register(SourceSpec(str(EXAMPLES / "catalog")))
    _, folder = registry.runnable(info.id)
    assert folder.python.exists()
    registry.removal.remove(info.id)
    assert not folder.root.exists()
    with pytest.raises(NotFound):
        registry.get(info.id)
    assert_nothing_left(registry, settings)


@pytest.mark.parametrize("module_id", [0, -1, 2**63, 99999999999999999999999, 42])
def test_unknown_or_out_of_range_ids_are_not_found(registry: Registry, module_id: int) -> None:
    for action in (
        registry.get,
        registry.removal.remove,
        registry.runnable,
        registry.updates.update,
    ):
        with pytest.raises(NotFound):
            action(module_id)


def test_a_module_asking_for_python_3_10_gets_a_3_10_environment(
    registry: Registry, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", install={"python_version": "3.10"})
    info = registry.registration.register(SourceSpec(str(folder)))
    assert info.python_version and info.python_version.startswith("3.10.")
    _, installed = registry.runnable(info.id)
    assert run_in(installed, "-c", "import sys; print(sys.version_info[:2])") == "(3, 10)"


def test_a_python_version_the_machine_lacks_fails_listing_what_it_has(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", install={"python_version": "3.4"})
    with pytest.raises(InstallError, match=r"3\.4.*available: .*3\.11") as caught:
        registry.registration.register(SourceSpec(str(folder)))
    assert caught.value.step == "python"
    assert_nothing_left(registry, settings)


def test_a_requirement_missing_from_pypi_fails_the_install_step_leaving_nothing(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", requirements="orchestra-no-such-package-7f3a9c\n")
    with pytest.raises(InstallError) as caught:
        registry.registration.register(SourceSpec(str(folder)))
    assert caught.value.step == "install"
    assert "orchestra-no-such-package-7f3a9c" in caught.value.message
    assert "orchestra-no-such-package-7f3a9c" in caught.value.log
    assert_nothing_left(registry, settings)


def test_metadata_with_several_mistakes_names_each_of_them(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    bad = {"description": 3, "args": "start", "output": {}, "install": {"executable": "a b"}}
    (folder / "metadata.json").write_text(json.dumps(bad))
    with pytest.raises(InvalidMetadata) as caught:
        registry.registration.register(SourceSpec(str(folder)))
    text = caught.value.message
    for key in ("name", "description", "args", "output.type", "install.executable"):
        assert key in text
    assert "install.files" in text
    assert_nothing_left(registry, settings)


@pytest.mark.parametrize("entry", ["missing.py", "../x", "/etc/hostname", "link.py"])
def test_install_files_that_are_missing_or_leave_the_package_fail_leaving_nothing(
    registry: Registry, settings: Settings, tmp_path: Path, entry: str
) -> None:
    (tmp_path / "x").write_text("secret")
    folder = make_module(tmp_path / "m", install={"files": ["main.py", entry]})
    (folder / "link.py").symlink_to(tmp_path / "x")
    with pytest.raises(InvalidInput) as caught:
        registry.registration.register(SourceSpec(str(folder)))
    # paths that are wrong on their face fail validation, the others the copy: both name the key
    assert "install.files" in caught.value.message
    assert repr(entry) in caught.value.message
    assert_nothing_left(registry, settings)


def test_an_option_line_in_requirements_fails_leaving_nothing(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", requirements="six\n--index-url http://evil.invalid/\n")
    with pytest.raises(InvalidInput, match="--index-url") as caught:
        registry.registration.register(SourceSpec(str(folder)))
    assert caught.value.key == "install.requirements"
    assert_nothing_left(registry, settings)


def test_a_requirements_file_named_in_metadata_is_used_and_must_stay_inside(
    registry: Registry, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", install={"requirements": "deps/reqs.in"})
    (folder / "deps").mkdir()
    (folder / "deps" / "reqs.in").write_text("six==1.17.0\n")
    info = registry.registration.register(SourceSpec(str(folder)))
    _, installed = registry.runnable(info.id)
    assert run_in(installed, "-c", "import six; print(six.__version__)") == "1.17.0"
    (tmp_path / "outside.txt").write_text("six\n")
    (folder / "deps" / "reqs.in").unlink()
    (folder / "deps" / "reqs.in").symlink_to(tmp_path / "outside.txt")
    other = make_module(tmp_path / "m", name="other", install={"requirements": "deps/reqs.in"})
    with pytest.raises(InvalidInput, match="outside"):
        registry.registration.register(SourceSpec(str(other)))


def test_a_second_module_with_the_same_requirements_builds_fast(
    registry: Registry, tmp_path: Path
) -> None:
    registry.registration.register(SourceSpec(str(EXAMPLES / "timeseries")))
    folder = make_module(tmp_path / "m", requirements="numpy>=1.24\n")
    began = time.perf_counter()
    info = registry.registration.register(SourceSpec(str(folder)))
    print(f"second registration with numpy took {time.perf_counter() - began:.2f} s")
    _, installed = registry.runnable(info.id)
    assert run_in(installed, "-c", "import numpy; print('ok')") == "ok"


def test_two_registrations_of_one_name_at_once_let_exactly_one_win(
    registry: Registry, tmp_path: Path
) -> None:
    folders = [make_module(tmp_path / f"m{i}", name="same") for i in range(2)]
    results: list[ModuleInfo | Exception] = []
    barrier = threading.Barrier(2)

    def register(folder: Path) -> None:
        barrier.wait()
        try:
            results.append(registry.registration.register(SourceSpec(str(folder))))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=register, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    winners = [r for r in results if isinstance(r, ModuleInfo)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], WrongState) and "same" in losers[0].message
    assert [s.name for s in registry.list()] == ["same"]


def test_registering_a_taken_name_names_the_existing_module_and_suggests_update(
    registry: Registry, tmp_path: Path
) -> None:
    first = registry.registration.register(SourceSpec(str(make_module(tmp_path / "a"))))
    with pytest.raises(WrongState) as caught:
        registry.registration.register(SourceSpec(str(make_module(tmp_path / "b"))))
    assert f"module {first.id}" in caught.value.message and "update" in caught.value.message


def test_update_keeps_the_old_environment_serving_until_the_switch(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", code="print('v1')\n", requirements="six==1.16.0\n")
    info = registry.registration.register(SourceSpec(str(folder)))
    _, old = registry.runnable(info.id)
    make_module(folder, code="print('v2')\n", requirements="six==1.17.0\n", version="2")
    seen_during: list[tuple[str, str]] = []

    def progress(message: str) -> None:
        if message.startswith("creating environment"):
            current = registry.runnable(info.id)[1]
            version = run_in(current, "-c", "import six; print(six.__version__)")
            seen_during.append((current.root.name, version))

    updated = registry.updates.update(info.id, progress=progress)
    assert seen_during == [(old.root.name, "1.16.0")]
    manifest, new = registry.runnable(info.id)
    assert new.root != old.root and manifest.version == "2" and updated.version == "2"
    assert run_in(new, "-m", "main") == "v2"
    assert run_in(new, "-c", "import six; print(six.__version__)") == "1.17.0"
    assert not old.root.exists()
    assert [p.name for p in settings.installs_dir.iterdir()] == [new.root.name]


def test_a_failed_update_keeps_the_old_generation(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", code="print('v1')\n")
    info = registry.registration.register(SourceSpec(str(folder)))
    make_module(folder, requirements="orchestra-no-such-package-7f3a9c\n")
    with pytest.raises(InstallError):
        registry.updates.update(info.id)
    _, current = registry.runnable(info.id)
    assert run_in(current, "-m", "main") == "v1"
    assert [p.name for p in settings.installs_dir.iterdir()] == [current.root.name]


def test_a_second_update_of_the_same_module_at_once_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    info = registry.registration.register(SourceSpec(str(make_module(tmp_path / "m"))))
    refused: list[WrongState] = []

    def progress(message: str) -> None:
        if message.startswith("fetching") and not refused:
            with pytest.raises(WrongState, match="already being updated") as caught:
                registry.updates.update(info.id)
            refused.append(caught.value)

    registry.updates.update(info.id, progress=progress)
    assert len(refused) == 1
    assert registry.get(info.id).status == "installed"


def test_background_registration_reaches_installed(registry: Registry) -> None:
    accepted = registry.registration.begin(SourceSpec(str(EXAMPLES / "catalog")))
    assert accepted.status == "installing"
    registry.join_background(timeout=120)
    info = registry.get(accepted.id)
    assert info.status == "installed" and info.name == "Example catalog"


def test_background_registration_of_a_bad_module_ends_in_error_with_the_log(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", requirements="orchestra-no-such-package-7f3a9c\n")
    accepted = registry.registration.begin(SourceSpec(str(folder)))
    registry.join_background(timeout=120)
    info = registry.get(accepted.id)
    assert info.status == "error"
    assert info.error and "install failed" in info.error
    assert "orchestra-no-such-package-7f3a9c" in info.install_log
    assert list(settings.installs_dir.iterdir()) == []
    assert list((settings.home / "tmp").iterdir()) == []
    registry.removal.remove(accepted.id)
    assert registry.list() == []


def test_an_uploaded_archive_installs_in_the_background_and_cannot_be_updated(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((EXAMPLES / "catalog").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(EXAMPLES / "catalog").as_posix())
    accepted = registry.registration.begin(SourceSpec("catalog.zip"), archive=archive)
    registry.join_background(timeout=120)
    info = registry.get(accepted.id)
    assert info.status == "installed", info.error
    assert info.source_kind == "archive" and info.source == "upload:catalog.zip"
    assert not archive.exists()
    with pytest.raises(WrongState, match="archive"):
        registry.updates.update(info.id)


def test_runnable_refuses_a_module_that_is_not_installed(
    registry: Registry, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", requirements="orchestra-no-such-package-7f3a9c\n")
    accepted = registry.registration.begin(SourceSpec(str(folder)))
    registry.join_background(timeout=120)
    with pytest.raises(WrongState, match="error"):
        registry.runnable(accepted.id)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_recovery_settles_installs_whose_process_is_gone_and_removes_leftovers(
    registry: Registry, settings: Settings
) -> None:
    kept = registry.registration.register(SourceSpec(str(EXAMPLES / "catalog")))
    pid = _dead_pid()
    with registry.db.write() as session:
        row = ModuleRow(
            name="half", status="installing", source="/x", source_kind="folder",
            installer_pid=pid, created=kept.created, updated=kept.created,
        )  # fmt: skip
        session.add(row)
    stale = settings.installs_dir / "0123456789abcdef"
    (stale / "env").mkdir(parents=True)
    (stale / "building.pid").write_text(str(pid))
    scratch = settings.home / "tmp" / f"install-{pid}-abc"
    scratch.mkdir(parents=True)
    live_scratch = settings.home / "tmp" / f"install-{os.getpid()}-abc"
    live_scratch.mkdir()
    registry.recover()
    half = [m for m in registry.list() if m.name == "half"][0]
    assert half.status == "error"
    assert "interrupted" in (registry.get(half.id).error or "")
    assert not stale.exists() and not scratch.exists() and live_scratch.exists()
    assert registry.runnable(kept.id)[1].python.exists()


def test_a_git_module_updates_to_a_new_commit(
    registry: Registry, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    files = {
        "metadata.json": (make_module(tmp_path / "m") / "metadata.json").read_text(),
        "main.py": "print('v1')\n",
    }
    repo = git_daemon.new_repo(files)
    info = registry.registration.register(SourceSpec(git_daemon.url(repo.name)))
    assert info.source_kind == "git" and info.commit
    second = make_repo(repo, {"main.py": "print('v2')\n"})
    updated = registry.updates.update(info.id)
    assert updated.commit == second != info.commit
    assert run_in(registry.runnable(info.id)[1], "-m", "main") == "v2"


def test_an_interrupted_registration_leaves_nothing(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    folder = make_module(tmp_path / "m", requirements="six\n")

    def progress(message: str) -> None:
        if message.startswith("installing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.registration.register(SourceSpec(str(folder)), progress=progress)
    assert_nothing_left(registry, settings)


@pytest.fixture
def versioned_repo(git_daemon: GitDaemon, tmp_path: Path) -> dict[str, Any]:
    """A served repository holding the module at its root and in models/m, in three commits."""

    def module_files(version: str) -> dict[str, str]:
        meta = (make_module(tmp_path / f"meta-{version}") / "metadata.json").read_text()
        code = f"print('{version}')\n"
        return {"metadata.json": meta, "main.py": code, "models/m/metadata.json": meta,
                "models/m/main.py": code}  # fmt: skip

    repo = git_daemon.new_repo(module_files("v1"))
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    make_repo(repo, module_files("v2"), branch="feature")
    feature = git(repo, "rev-parse", "HEAD")
    head = make_repo(repo, module_files("v3"), branch="main")
    return {"repo": repo, "urls": {"git": git_daemon.url(repo.name), "file": repo.as_uri()},
            "v1": first, "feature": feature, "main": head}  # fmt: skip


@pytest.mark.parametrize("transport", ["git", "file"])
@pytest.mark.parametrize(
    ("ref", "expected", "printed"),
    [
        (None, "main", "v3"),
        ("feature", "feature", "v2"),
        ("v1", "v1", "v1"),
        ("<sha>", "v1", "v1"),
        ("<short>", "v1", "v1"),
    ],  # fmt: skip
)
@pytest.mark.parametrize("subdir", [None, "models/m"])
def test_a_git_source_registers_at_a_branch_tag_or_commit_recording_that_commit(
    registry: Registry,
    versioned_repo: dict[str, Any],
    transport: str,
    ref: str | None,
    expected: str,
    printed: str,
    subdir: str | None,
) -> None:
    sha = versioned_repo["v1"]
    ref = {"<sha>": sha, "<short>": sha[:10]}.get(ref or "", ref)
    url = versioned_repo["urls"][transport]
    info = registry.registration.register(SourceSpec(url, ref, subdir))
    assert info.source_kind == "git" and info.source == url
    assert info.commit == versioned_repo[expected]
    assert (info.ref, info.subdir) == (ref, subdir)
    assert run_in(registry.runnable(info.id)[1], "-m", "main") == printed
