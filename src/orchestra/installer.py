"""Building a module's generation: fetch the source, validate it, copy its files, build its env.

Nothing here touches the database: the registry records what this builds. That split also
lets a registration start installing while the database layer is still being loaded (see
``Service``). A generation is built at its final path, ``installs/<uuid>/``; while it is
being built, a ``building.pid`` marker in it keeps ``prune()`` (of any process) away from it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra import compiles, environments, interpreters
from orchestra.errors import InstallError, InvalidInput
from orchestra.executors import proctree
from orchestra.manifest import AS_OF_COMMIT, Manifest, load_manifest
from orchestra.requirements import read_requirements
from orchestra.sources import FetchedSource, SourceSpec, fetch, fetch_archive
from orchestra.storage.files import InstallFolder

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]
BUILDING_MARKER = "building.pid"
# generations this process is building; other processes' builds are known by their marker
_BUILDING: set[str] = set()
_BUILDING_LOCK = threading.Lock()


@dataclass(frozen=True)
class Built:
    """A complete generation, not yet pointed at by any module record."""

    spec: SourceSpec
    folder: InstallFolder
    manifest: Manifest
    fetched: FetchedSource
    python_version: str
    log: str
    lock: list[str]  # the exact versions installed: what workers install
    exclude_newer: str | None = None  # the upload time after which the index was ignored


def build(
    spec: SourceSpec, settings: Settings, *, archive: Path | None = None, progress: Progress
) -> Built:
    """Fetch ``spec`` (or unpack ``archive``), validate it and build a new generation."""
    with scratch(settings, "install") as workdir:
        fetched = _fetch(spec, archive, workdir, settings, progress)
        manifest = load_manifest(fetched.root)
        requirements = read_requirements(fetched.root, manifest, settings)
        return _build_generation(spec, fetched, manifest, requirements, settings, progress)


def _fetch(
    spec: SourceSpec, archive: Path | None, workdir: Path, settings: Settings, progress: Progress
) -> FetchedSource:
    if archive is not None:
        progress("unpacking the uploaded archive")
        return fetch_archive(archive, workdir, settings, subdir=spec.subdir)
    progress(f"fetching {spec.location}")
    return fetch(spec, workdir, settings, progress=progress)


def _build_generation(
    spec: SourceSpec,
    fetched: FetchedSource,
    manifest: Manifest,
    requirements: list[str],
    settings: Settings,
    progress: Progress,
) -> Built:
    """Copy the files and build the environment in a new generation folder."""
    from orchestra.sources.folder import copy_files

    lines: list[str] = []
    chosen, cutoff = _resolution(spec, manifest, fetched, lines.append)
    python = interpreters.find_python(chosen)
    folder = _new_generation(settings)
    try:
        copy_files(fetched.root, manifest.files, folder.code)
        progress(f"creating environment with Python {chosen or platform.python_version()}")
        if requirements:
            progress(f"installing {len(requirements)} requirement(s)")
        if cutoff:
            lines.append(f"resolved as of {cutoff}: later releases are ignored")
            folder.exclude_newer.write_text(cutoff, encoding="ascii")
        version = environments.build_environment(
            folder.env, requirements=requirements, python=python, settings=settings,
            log=lines.append, exclude_newer=cutoff,
        )  # fmt: skip
        # no requirements, nothing to pin: the lock is empty and uv need not be asked
        lock = environments.freeze(folder.env, settings) if requirements else []
        lines.append("locked: " + (", ".join(lock) or "nothing installed"))
        text = "\n".join(lines) + "\n"
        folder.log.write_text(text, encoding="utf-8")
        folder.lock.write_text("".join(line + "\n" for line in lock), encoding="utf-8")
        folder.metadata.write_text(json.dumps(manifest.raw), encoding="utf-8")
    except BaseException as exc:
        if isinstance(exc, InstallError):
            exc.log = "\n".join(lines) + "\n"
        abandon(folder)
        raise
    return Built(spec, folder, manifest, fetched, version, text, lock, cutoff)


def _resolution(
    spec: SourceSpec, manifest: Manifest, fetched: FetchedSource, log: Progress
) -> tuple[str | None, str | None]:
    """The interpreter version and the cutoff: the module's own, else the operator's."""
    for key, own, given in (("python_version", manifest.python_version, spec.python),
                            ("resolve_as_of", manifest.resolve_as_of, spec.as_of)):  # fmt: skip
        if own and given and own != given:
            log(f"install.{key} is {own} in the module's metadata: {given} is not used")
    as_of = manifest.resolve_as_of or spec.as_of
    return manifest.python_version or spec.python, exclude_newer(as_of, fetched)


def exclude_newer(as_of: str | None, fetched: FetchedSource) -> str | None:
    """uv's ``--exclude-newer`` for ``as_of``: a date's last second (UTC), or the commit's time."""
    if as_of is None:
        return None
    if as_of != AS_OF_COMMIT:
        return f"{as_of}T23:59:59Z"
    if not fetched.committed:
        raise InvalidInput(
            f'as_of: "{AS_OF_COMMIT}" needs a git source; this module comes from a '
            f"{fetched.kind}: give a date instead",
            key="as_of",
        )
    moment = datetime.fromisoformat(fetched.committed).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_generation(settings: Settings) -> InstallFolder:
    settings.installs_dir.mkdir(parents=True, exist_ok=True)
    folder = InstallFolder(settings.installs_dir, uuid.uuid4().hex)
    with _BUILDING_LOCK:
        _BUILDING.add(folder.root.name)
    folder.root.mkdir()
    (folder.root / BUILDING_MARKER).write_text(str(os.getpid()))
    folder.code.mkdir()
    return folder


def completed(built: Built, settings: Settings) -> None:
    """Once a record points at the generation: drop the marker, compile bytecode."""
    # the marker goes only after the commit, so prune() sees one or the other
    (built.folder.root / BUILDING_MARKER).unlink(missing_ok=True)
    with _BUILDING_LOCK:
        _BUILDING.discard(built.folder.root.name)
    if settings.compile_bytecode:
        compiles.start_bytecode_compile(built.folder, settings)


def abandon(folder: InstallFolder) -> None:
    """Remove a generation that no record will point at."""
    environments.remove_generation(folder.root)
    with _BUILDING_LOCK:
        _BUILDING.discard(folder.root.name)


def in_construction(folder: Path) -> bool:
    """Whether ``folder`` is a generation that this or another live process is building."""
    with _BUILDING_LOCK:
        if folder.name in _BUILDING:
            return True
    marker = folder / BUILDING_MARKER
    try:
        pid = int(marker.read_text().strip())
        return proctree.alive_since(pid, marker.stat().st_mtime)
    except (OSError, ValueError):
        return False


@contextmanager
def scratch(settings: Settings, purpose: str) -> Iterator[Path]:
    """A scratch folder under ``home/tmp``, removed afterwards."""
    base = settings.home / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the registry's recovery tell whose folder it is
    path = Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_scratch(settings: Settings) -> None:
    """Remove scratch folders whose process is gone."""
    base = settings.home / "tmp"
    if not base.is_dir():
        return
    for child in base.iterdir():
        if not proctree.alive_since(_owner_pid(child.name), child.stat().st_mtime):
            _LOGGER.info("removing stale scratch folder %s", child)
            shutil.rmtree(child, ignore_errors=True)


def _owner_pid(name: str) -> int:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0
