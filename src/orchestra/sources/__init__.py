"""Where a module comes from: a local folder, a git repository, or an uploaded zip archive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.errors import InvalidInput

if TYPE_CHECKING:
    from orchestra.config import Settings

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked for: a folder path or git URL, and optionally a ref and sub-folder."""

    location: str
    ref: str | None = None
    subdir: str | None = None
    # what an operator supplies that an older module never declared (kept by updates)
    as_of: str | None = None  # install.resolve_as_of: a date or "commit"
    python: str | None = None  # install.python_version


@dataclass(frozen=True)
class FetchedSource:
    """A fetched source: the folder holding metadata.json, its kind and its git commit."""

    root: Path
    kind: str  # folder | git | archive
    commit: str | None = None
    committed: str | None = None  # the commit's date (ISO 8601, with its offset)


def fetch(
    spec: SourceSpec, workdir: Path, settings: Settings, *, progress: Progress | None = None
) -> FetchedSource:
    """Fetch a folder or git source; ``workdir`` is an empty scratch folder the caller owns."""
    from orchestra.sources import folder, git

    if git.is_git_location(spec.location) or (spec.ref and folder.is_git_checkout(spec)):
        return git.fetch_git(spec, workdir, settings, progress=progress)
    if spec.ref and Path(spec.location).expanduser().is_dir():
        raise InvalidInput(f"ref: {spec.location} is not a git repository", key="ref")
    return folder.fetch_folder(spec)


def precheck(spec: SourceSpec, settings: Settings, *, archive: Path | None = None) -> None:
    """Refuse at once what is wrong without fetching: a location, a folder, unsafe archives."""
    # checked before a registration is accepted, so these leave no module record at all
    from orchestra.sources import archive as zips
    from orchestra.sources import folder, git

    if archive is not None:
        zips.check_archive(archive, settings)
    elif not git.is_git_location(spec.location) and not spec.ref:
        folder.fetch_folder(spec)  # only looks: the folder, its subdir and metadata.json


def fetch_archive(
    archive: Path, workdir: Path, settings: Settings, *, subdir: str | None = None
) -> FetchedSource:
    """Unpack an uploaded zip archive safely into ``workdir``."""
    from orchestra.sources import archive as zips

    return zips.fetch_archive(archive, workdir, settings, subdir=subdir)
