"""A module in a local folder, and copying its listed files without leaving that folder.

Symbolic links inside the module folder are copied as the content they point to, so an
installed module never holds a link; a link whose target resolves outside the folder, or a
folder link that loops back onto one of its own ancestors, is refused.
"""

from __future__ import annotations

import logging
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import NoReturn

from orchestra.errors import InvalidInput, SourceError
from orchestra.manifest import METADATA_FILE, relative_path_problem
from orchestra.sources import FetchedSource, SourceSpec

_LOGGER = logging.getLogger(__name__)

_FILES_KEY = "install.files"


def fetch_folder(spec: SourceSpec) -> FetchedSource:
    """The module in a local folder (or its ``spec.subdir``), used in place."""
    folder = Path(spec.location).expanduser()
    if not spec.location or not folder.is_dir():
        raise SourceError(f"source folder not found: {spec.location!r}", key="source")
    root = module_root(folder.resolve(), spec.subdir, where=spec.location)
    return FetchedSource(root=root, kind="folder")


def module_root(base: Path, subdir: str | None, *, where: str) -> Path:
    """``base`` or its ``subdir``, checked to stay inside ``base`` and to hold metadata.json."""
    root = base.resolve()
    if subdir:
        root = resolve_inside(base, subdir, "subdir")
        if not root.is_dir():
            raise SourceError(f"subdir {subdir!r} not found in {where}", key="subdir")
    metadata = resolve_inside(root, METADATA_FILE, METADATA_FILE)
    if not metadata.is_file():
        place = f"subdir {subdir!r} of {where}" if subdir else where
        raise SourceError(f"no {METADATA_FILE} in {place}", key="source")
    return root


def is_git_checkout(spec: SourceSpec) -> bool:
    """Whether the local folder is a git work tree or bare repository (so a ref can be cloned)."""
    folder = Path(spec.location).expanduser()
    if not spec.location or not folder.is_dir():
        return False
    # look at the layout only: running git inside an untrusted tree could run its hooks
    if (folder / ".git").exists():
        return True
    return (folder / "HEAD").is_file() and (folder / "objects").is_dir()


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """``root/relative`` with links resolved; InvalidInput(key=what) when it leaves ``root``."""
    problem = relative_path_problem(relative)
    if problem:
        raise InvalidInput(f"{what}: {relative!r} {problem}", key=what)
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise InvalidInput(f"{what}: {relative!r} leads outside the module folder", key=what)
    return target


def copy_files(root: Path, files: Iterable[str], dest: Path) -> None:
    """Copy each ``install.files`` entry (file or folder) from ``root`` to ``dest``."""
    base = root.resolve()
    for entry in files:
        source = resolve_inside(base, entry, _FILES_KEY)
        if not source.exists():
            message = f"{_FILES_KEY}: {entry!r} not found in the module folder"
            raise InvalidInput(message, key=_FILES_KEY)
        target = dest / PurePosixPath(entry)
        _copy_tree(base, base / entry, target, entry, frozenset())


def _copy_tree(
    base: Path, source: Path, target: Path, entry: str, ancestors: frozenset[Path]
) -> None:
    real = source.resolve()
    if not real.is_relative_to(base):
        _refuse(entry, source, base, "is a link leading outside the module folder")
    if not real.exists():
        _refuse(entry, source, base, "is a broken link")
    mode = real.stat().st_mode
    if stat.S_ISREG(mode):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
    elif stat.S_ISDIR(mode):
        if real in ancestors:
            _refuse(entry, source, base, "is a link that loops back to a folder above it")
        target.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            _copy_tree(base, child, target / child.name, entry, ancestors | {real})
    else:
        _refuse(entry, source, base, "is not a regular file or folder")


def _refuse(entry: str, source: Path, base: Path, why: str) -> NoReturn:
    inner = source.relative_to(base).as_posix()
    where = repr(entry) if inner == PurePosixPath(entry).as_posix() else f"{entry!r} ({inner})"
    raise InvalidInput(f"{_FILES_KEY}: {where} {why}", key=_FILES_KEY)
