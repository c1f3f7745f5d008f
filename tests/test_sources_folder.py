from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestra.config import Settings
from orchestra.errors import InvalidInput, SourceError
from orchestra.sources import SourceSpec, fetch
from orchestra.sources.folder import (
    copy_files,
    fetch_folder,
    is_git_checkout,
    resolve_inside,
)
from tests.support.gitserver import make_repo, write_files


@pytest.fixture
def module(tmp_path: Path) -> Path:
    root = tmp_path / "module"
    write_files(
        root,
        {
            "metadata.json": "{}",
            "main.py": "print('hi')\n",
            "Model/__init__.py": "",
            "Model/core.py": "VALUE = 1\n",
            "Model/data/weights.bin": b"\x00\x01\x02",
            "extra/metadata.json": "{}",
            "requirements.txt": "numpy\n",
        },
    )
    return root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "installed"


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def refused(root: Path, files: list[str], dest: Path) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        copy_files(root, files, dest)
    assert caught.value.key == "install.files"
    return caught.value


# --- fetch_folder ---------------------------------------------------------------------------


def test_a_folder_source_is_used_in_place(module: Path) -> None:
    fetched = fetch_folder(SourceSpec(str(module)))
    assert (fetched.root, fetched.kind, fetched.commit) == (module.resolve(), "folder", None)


def test_a_folder_subdir_becomes_the_root(module: Path) -> None:
    assert fetch_folder(SourceSpec(str(module), subdir="extra")).root == module / "extra"


def test_a_missing_folder_is_a_source_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nowhere"):
        fetch_folder(SourceSpec(str(tmp_path / "nowhere")))


def test_a_folder_without_metadata_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="metadata.json"):
        fetch_folder(SourceSpec(str(tmp_path)))


def test_a_missing_subdir_is_a_source_error_naming_it(module: Path) -> None:
    with pytest.raises(SourceError, match="absent") as caught:
        fetch_folder(SourceSpec(str(module), subdir="absent"))
    assert caught.value.key == "subdir"


@pytest.mark.parametrize("subdir", ["..", "../module", "/tmp", "Model/../.."])
def test_a_subdir_that_escapes_the_folder_is_refused(module: Path, subdir: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        fetch_folder(SourceSpec(str(module), subdir=subdir))
    assert caught.value.key == "subdir"


def test_a_metadata_link_leading_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "linked"
    root.mkdir()
    write_files(tmp_path, {"elsewhere.json": "{}"})
    (root / "metadata.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidInput, match="outside"):
        fetch_folder(SourceSpec(str(root)))


def test_a_git_work_tree_is_recognised_by_its_layout(tmp_path: Path, module: Path) -> None:
    assert not is_git_checkout(SourceSpec(str(module)))
    make_repo(module, {})
    assert is_git_checkout(SourceSpec(str(module)))
    assert not is_git_checkout(SourceSpec(str(tmp_path / "missing")))


def test_a_plain_folder_is_a_folder_source(
    module: Path, tmp_path: Path, settings: Settings
) -> None:
    fetched = fetch(SourceSpec(str(module), subdir="extra"), tmp_path, settings)
    assert (fetched.kind, fetched.root) == ("folder", module / "extra")


def test_a_ref_on_a_plain_folder_is_refused(
    module: Path, tmp_path: Path, settings: Settings
) -> None:
    with pytest.raises(InvalidInput, match="git") as caught:
        fetch(SourceSpec(str(module), ref="main"), tmp_path, settings)
    assert caught.value.key == "ref"


# --- resolve_inside -------------------------------------------------------------------------


def test_resolve_inside_returns_the_resolved_path(module: Path) -> None:
    path = resolve_inside(module, "requirements.txt", "install.requirements")
    assert path == (module / "requirements.txt").resolve()


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "", "a\\b", "a\x00"])
def test_resolve_inside_refuses_paths_that_leave_the_root(module: Path, relative: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve_inside(module, relative, "install.requirements")
    assert caught.value.key == "install.requirements"


def test_resolve_inside_refuses_a_link_out_of_the_root(module: Path, tmp_path: Path) -> None:
    (module / "reqs.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidInput, match="reqs.txt"):
        resolve_inside(module, "reqs.txt", "install.requirements")


# --- copy_files: success --------------------------------------------------------------------


def test_files_and_folders_are_copied_with_their_relative_paths(module: Path, dest: Path) -> None:
    copy_files(module, ["main.py", "Model"], dest)
    assert listing(dest) == {
        "main.py", "Model", "Model/__init__.py", "Model/core.py", "Model/data",
        "Model/data/weights.bin",
    }  # fmt: skip
    assert (dest / "Model" / "data" / "weights.bin").read_bytes() == b"\x00\x01\x02"


def test_a_nested_entry_keeps_its_parent_folders(module: Path, dest: Path) -> None:
    copy_files(module, ["Model/core.py"], dest)
    assert listing(dest) == {"Model", "Model/core.py"}


def test_overlapping_entries_are_copied_once(module: Path, dest: Path) -> None:
    copy_files(module, ["Model", "Model/core.py", "./main.py"], dest)
    assert (dest / "Model" / "core.py").read_text() == "VALUE = 1\n"
    assert (dest / "main.py").is_file()


def test_the_executable_bit_is_kept(module: Path, dest: Path) -> None:
    (module / "main.py").chmod(0o755)
    copy_files(module, ["main.py"], dest)
    assert os.access(dest / "main.py", os.X_OK)


def test_links_inside_the_root_are_copied_as_content(module: Path, dest: Path) -> None:
    (module / "Model" / "alias.py").symlink_to("core.py")
    (module / "Model" / "shared").symlink_to("../extra", target_is_directory=True)
    (module / "entry.py").symlink_to("main.py")
    copy_files(module, ["Model", "entry.py"], dest)
    alias = dest / "Model" / "alias.py"
    assert not alias.is_symlink() and alias.read_text() == "VALUE = 1\n"
    assert (dest / "Model" / "shared" / "metadata.json").is_file()
    assert not (dest / "entry.py").is_symlink()
    assert (dest / "entry.py").read_text() == "print('hi')\n"


# --- copy_files: refusals -------------------------------------------------------------------


def test_a_missing_entry_is_refused_by_name(module: Path, dest: Path) -> None:
    error = refused(module, ["main.py", "weights.h5"], dest)
    assert "weights.h5" in error.message and "not found" in error.message


@pytest.mark.parametrize("entry", ["../outside.py", "Model/../../outside.py", ".."])
def test_an_entry_with_dotdot_is_refused(module: Path, dest: Path, entry: str) -> None:
    (module.parent / "outside.py").write_text("secret\n")
    assert entry in refused(module, [entry], dest).message
    assert not dest.exists()


def test_an_absolute_entry_is_refused(module: Path, dest: Path) -> None:
    assert "/etc/hostname" in refused(module, ["/etc/hostname"], dest).message


def test_an_entry_that_is_a_link_leading_outside_is_refused(
    module: Path, dest: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("secret\n")
    (module / "leak.txt").symlink_to(tmp_path / "secret.txt")
    error = refused(module, ["leak.txt"], dest)
    assert "leak.txt" in error.message and "outside" in error.message
    assert not (dest / "leak.txt").exists()


def test_a_link_leading_outside_nested_in_a_folder_is_refused(
    module: Path, dest: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("secret\n")
    (module / "Model" / "data" / "leak").symlink_to(tmp_path / "secret.txt")
    error = refused(module, ["Model"], dest)
    assert "Model/data/leak" in error.message
    assert not (dest / "Model" / "data" / "leak").exists()


def test_a_folder_link_leading_outside_nested_in_a_folder_is_refused(
    module: Path, dest: Path
) -> None:
    (module / "Model" / "etc").symlink_to("/etc", target_is_directory=True)
    assert "Model/etc" in refused(module, ["Model"], dest).message


def test_a_folder_link_looping_back_is_refused(module: Path, dest: Path) -> None:
    (module / "Model" / "loop").symlink_to("..", target_is_directory=True)
    assert "loops" in refused(module, ["Model"], dest).message


def test_a_broken_link_is_refused(module: Path, dest: Path) -> None:
    (module / "Model" / "gone.py").symlink_to("missing.py")
    assert "Model/gone.py" in refused(module, ["Model"], dest).message


def test_a_named_pipe_is_refused(module: Path, dest: Path) -> None:
    os.mkfifo(module / "Model" / "pipe")
    assert "not a regular file" in refused(module, ["Model"], dest).message
