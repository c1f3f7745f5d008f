from __future__ import annotations

import os
import stat
import struct
import zipfile
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

import pytest

from orchestra.config import Settings
from orchestra.errors import InvalidInput, SourceError, TooLarge
from orchestra.sources import fetch_archive

METADATA = '{"name": "zipped"}'


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    """Where the test writes its archive: beside, not inside, the work folder."""
    return tmp_path / "upload.zip"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def build(path: Path, members: Mapping[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, content in members.items():
            zipped.writestr(name, content)
    return path


def add_member(path: Path, info: zipfile.ZipInfo, content: bytes = b"x") -> None:
    with zipfile.ZipFile(path, "a") as zipped:
        zipped.writestr(info, content)


def everything_below(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def refused(
    upload: Path, workdir: Path, settings: Settings, kind: type[Exception] = InvalidInput
) -> str:
    """Assert the archive is refused with ``kind`` and that nothing stays written."""
    outside_before = everything_below(upload.parent) - everything_below(workdir)
    with pytest.raises(kind) as caught:
        fetch_archive(upload, workdir, settings)
    assert everything_below(workdir) == set()
    assert everything_below(upload.parent) - everything_below(workdir) == outside_before
    return str(caught.value)


# --- accepted -------------------------------------------------------------------------------


def test_metadata_at_the_root_makes_the_root_the_module(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA, "Model/__init__.py": "", "Model/main.py": "x = 1"})
    fetched = fetch_archive(upload, workdir, settings)
    assert (fetched.kind, fetched.commit) == ("archive", None)
    assert workdir in fetched.root.parents
    assert (fetched.root / "metadata.json").read_text() == METADATA
    assert (fetched.root / "Model" / "main.py").read_text() == "x = 1"


def test_a_single_top_level_folder_is_the_module_as_in_github_zips(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"repo-main/": "", "repo-main/metadata.json": METADATA, "__MACOSX/x": "junk"})
    fetched = fetch_archive(upload, workdir, settings)
    assert fetched.root.name == "repo-main"


def test_a_subdir_applies_inside_the_single_top_level_folder(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"repo-main/README": "", "repo-main/models/a/metadata.json": METADATA})
    fetched = fetch_archive(upload, workdir, settings, subdir="models/a")
    assert fetched.root.as_posix().endswith("repo-main/models/a")


def test_a_subdir_applies_at_the_root_when_there_is_no_single_folder(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"a/metadata.json": METADATA, "b/metadata.json": METADATA})
    assert fetch_archive(upload, workdir, settings, subdir="b").root.name == "b"


def test_executable_members_stay_executable(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA})
    info = zipfile.ZipInfo("run.sh")
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    add_member(upload, info, b"#!/bin/sh\n")
    fetched = fetch_archive(upload, workdir, settings)
    assert (fetched.root / "run.sh").stat().st_mode & 0o100


# --- refused --------------------------------------------------------------------------------


def test_a_file_that_is_not_a_zip_is_refused(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    upload.write_bytes(b"this is plain text, not an archive\n" * 10)
    assert "not a zip" in refused(upload, workdir, settings)


def test_a_truncated_zip_is_refused(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {"metadata.json": METADATA, "big.bin": bytes(range(256)) * 400})
    data = upload.read_bytes()
    upload.write_bytes(data[:200] + data[-22:])
    refused(upload, workdir, settings)


def test_an_archive_over_the_upload_limit_is_too_large(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA, "blob": os.urandom(5000)})
    small = settings.with_overrides(max_upload=1000)
    assert "1000" in refused(upload, workdir, small, TooLarge)


def test_too_many_members_are_too_large(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {f"f{i}.txt": "x" for i in range(11)})
    assert "10 members" in refused(
        upload, workdir, settings.with_overrides(max_archive_members=10), TooLarge
    )


def test_a_zip_bomb_is_refused_from_its_declared_size(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA, "zeros.bin": bytes(5 * 1024 * 1024)})
    assert upload.stat().st_size < 20_000
    assert "1048576" in refused(
        upload, workdir, settings.with_overrides(max_unpacked=1024 * 1024), TooLarge
    )


def patch_sizes(path: Path, member: str, declared: int) -> None:
    """Make the headers of ``member`` lie: they declare ``declared`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.find(b"PK\x03\x04")
    while local != -1:
        name_length = struct.unpack_from("<H", data, local + 26)[0]
        if data[local + 30 : local + 30 + name_length] == name:
            struct.pack_into("<I", data, local + 22, declared)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_length] == name:
            struct.pack_into("<I", data, central + 24, declared)
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


def test_a_zip_bomb_with_lying_headers_is_refused_while_unpacking(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA, "zeros.bin": bytes(4 * 1024 * 1024)})
    patch_sizes(upload, "zeros.bin", 100)
    with zipfile.ZipFile(upload) as zipped:
        assert sum(info.file_size for info in zipped.infolist()) < 200
    message = refused(upload, workdir, settings.with_overrides(max_unpacked=1024 * 1024))
    assert "zeros.bin" in message


@pytest.mark.parametrize(
    "name", ["../evil.py", "a/../../evil.py", "/tmp/evil.py", "a\\..\\evil.py", "ok/../../x"]
)
def test_a_member_that_could_escape_is_refused(
    name: str, upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA})
    add_member(upload, zipfile.ZipInfo(name))
    assert repr(name) in refused(upload, workdir, settings)
    assert not (upload.parent / "evil.py").exists()


def test_a_member_name_with_nul_is_refused(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {"metadata.json": METADATA, "evil.pyXhidden": "x"})
    data = upload.read_bytes().replace(b"evil.pyXhidden", b"evil.py\x00hidden")
    upload.write_bytes(data)
    assert "NUL" in refused(upload, workdir, settings)


def test_a_symlink_member_is_refused(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {"metadata.json": METADATA})
    info = zipfile.ZipInfo("Model/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    add_member(upload, info, b"/etc/passwd")
    assert "symbolic link" in refused(upload, workdir, settings)


def test_a_device_member_is_refused(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {"metadata.json": METADATA})
    info = zipfile.ZipInfo("fifo")
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    add_member(upload, info)
    assert "not a file" in refused(upload, workdir, settings)


@pytest.mark.parametrize("second", ["Model/x.py", "Model/./x.py", "Model//x.py"])
def test_a_duplicate_member_is_refused(
    second: str, upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA, "Model/x.py": "first"})
    duplicate = second == "Model/x.py"
    with pytest.warns(UserWarning, match="Duplicate") if duplicate else nullcontext():
        add_member(upload, zipfile.ZipInfo(second), b"second")
    assert "more than once" in refused(upload, workdir, settings)


def test_an_encrypted_member_is_refused(upload: Path, workdir: Path, settings: Settings) -> None:
    build(upload, {"metadata.json": METADATA, "secret.txt": "hidden"})
    data = bytearray(upload.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            data[at + offset] |= 0x1
            at = data.find(signature, at + 4)
    upload.write_bytes(bytes(data))
    assert "encrypted" in refused(upload, workdir, settings)


def test_an_archive_without_metadata_is_a_source_error(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"README.md": "nothing", "Model/main.py": ""})
    assert "metadata.json" in refused(upload, workdir, settings, SourceError)


def test_a_subdir_escaping_the_archive_is_refused(
    upload: Path, workdir: Path, settings: Settings
) -> None:
    build(upload, {"metadata.json": METADATA})
    with pytest.raises(InvalidInput) as caught:
        fetch_archive(upload, workdir, settings, subdir="../..")
    assert caught.value.key == "subdir"
    assert everything_below(workdir) == set()
