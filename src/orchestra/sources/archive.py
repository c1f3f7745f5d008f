"""A module uploaded as a zip archive, unpacked without trusting its headers.

``ZipFile.extract`` quietly rewrites ``../x`` to ``x``, writes links as plain files and lets a
duplicate name win; such archives are refused here instead, the sizes and member count are
capped before anything is written, and the bytes actually unpacked are counted as well.
"""

from __future__ import annotations

import logging
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from orchestra.errors import InvalidInput, TooLarge
from orchestra.manifest import METADATA_FILE
from orchestra.sources import FetchedSource
from orchestra.sources.folder import module_root

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)

_KEY = "file"
_CHUNK = 1024 * 1024
# folders that archivers add beside the content; they do not count as a top-level folder
_IGNORED_TOP = {"__MACOSX"}


def fetch_archive(
    archive: Path, workdir: Path, settings: Settings, *, subdir: str | None = None
) -> FetchedSource:
    """Check and unpack ``archive`` into ``workdir``; the root is where metadata.json is."""
    if archive.stat().st_size > settings.max_upload:
        raise TooLarge(f"archive: larger than {settings.max_upload} bytes", key=_KEY)
    target = workdir / "unpacked"
    try:
        unpack_checked(archive, target, settings)
        base = _content_root(target)
        root = module_root(base, subdir, where="the archive")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return FetchedSource(root=root, kind="archive")


def unpack_checked(archive: Path, target: Path, settings: Settings) -> None:
    """Unpack ``archive`` into a new folder ``target``, refusing anything unsafe or too big."""
    with _open(archive) as zipped:
        members = _checked_members(zipped, settings)
        target.mkdir(parents=True)
        _unpack(zipped, members, target, settings.max_unpacked)


def check_archive(archive: Path, settings: Settings) -> None:
    """Refuse an archive from its directory alone: size, member count, unsafe members."""
    if archive.stat().st_size > settings.max_upload:
        raise TooLarge(f"archive: larger than {settings.max_upload} bytes", key=_KEY)
    with _open(archive) as zipped:
        _checked_members(zipped, settings)


def _open(archive: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(archive):
        raise InvalidInput("archive: not a zip archive", key=_KEY)
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"archive: not a readable zip archive ({exc})", key=_KEY) from exc


def _checked_members(zipped: zipfile.ZipFile, settings: Settings) -> list[zipfile.ZipInfo]:
    """Every member, after refusing archives that are too big or hold unsafe entries."""
    members = zipped.infolist()
    if len(members) > settings.max_archive_members:
        raise TooLarge(
            f"archive: more than {settings.max_archive_members} members ({len(members)})",
            key=_KEY,
        )
    declared = sum(info.file_size for info in members)
    if declared > settings.max_unpacked:
        raise TooLarge(
            f"archive: unpacks to {declared} bytes, over the limit of {settings.max_unpacked}",
            key=_KEY,
        )
    seen: set[str] = set()
    for info in members:
        name = _safe_name(info)
        if name in seen:
            raise InvalidInput(f"archive: {info.orig_filename!r} appears more than once", key=_KEY)
        seen.add(name)
        _check_kind(info)
    return members


def _safe_name(info: zipfile.ZipInfo) -> str:
    """The member's normalised relative path; InvalidInput for a name that could escape."""
    # orig_filename: ZipInfo cuts filename at a NUL byte, hiding what the archive says
    raw = info.orig_filename
    if not raw or "\x00" in raw or "\\" in raw:
        raise InvalidInput(f"archive: member name {raw!r} is empty or has NUL or '\\'", key=_KEY)
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidInput(f"archive: member {raw!r} leads outside the archive", key=_KEY)
    return path.as_posix()


def _check_kind(info: zipfile.ZipInfo) -> None:
    """Only plain files and folders, unencrypted."""
    name = info.orig_filename
    if info.flag_bits & 0x1:
        raise InvalidInput(f"archive: member {name!r} is encrypted", key=_KEY)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InvalidInput(f"archive: member {name!r} is a symbolic link", key=_KEY)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidInput(f"archive: member {name!r} is not a file or folder", key=_KEY)


def _unpack(
    zipped: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, limit: int
) -> None:
    """Write every member below ``target``, counting the bytes really produced."""
    written = 0
    for info in members:
        path = target / _safe_name(info)
        try:
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            written = _write_member(zipped, info, path, written, limit)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
            raise InvalidInput(f"archive: member {info.orig_filename!r}: {exc}", key=_KEY) from exc
        if (info.external_attr >> 16) & 0o111:
            path.chmod(0o755)


def _write_member(
    zipped: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, written: int, limit: int
) -> int:
    # "xb": never follow or replace something already there
    with zipped.open(info) as source, path.open("xb") as sink:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise TooLarge(f"archive: unpacks to more than {limit} bytes", key=_KEY)
            sink.write(chunk)
    return written


def _content_root(target: Path) -> Path:
    """The archive's root, or its single top-level folder (as in GitHub's zips)."""
    if (target / METADATA_FILE).exists():
        return target
    tops = [p for p in target.iterdir() if p.name not in _IGNORED_TOP]
    # a lone folder is the content even without metadata.json: a subdir applies inside it
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else target
