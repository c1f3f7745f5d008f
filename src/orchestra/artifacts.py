"""What workers on other machines send and fetch: module packages, output files, log chunks.

Workers share no file system with the API server, so the server hands out a zip of
a module generation (its code, metadata and lock, with a checksum) and receives each remote
task's output files and log chunks into the task's own folder here, where downloads and log
reads find them exactly as for a local task.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import select

from orchestra.environments import recorded_version
from orchestra.errors import InvalidInput, NotFound, WrongState
from orchestra.storage.files import InstallFolder, TaskFolder
from orchestra.storage.tables import ModuleRow, TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

GENERATION = re.compile(r"^[0-9a-f]{32}$")  # installs/<uuid4 hex>
SHA256 = re.compile(r"^[0-9a-f]{64}$")
LOG_STREAMS = ("stdout", "stderr")
_CHUNK = 256 * 1024  # bytes read from a request body at a time
PACKAGE_NAME = "package.zip"
MANIFEST_NAME = "package.json"  # inside the zip: module, generation, metadata, lock, python


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- module packages --------------------------------------------------------------------------


def package(settings: Settings, db: Database, module_id: int, generation: str) -> tuple[Path, str]:
    """The zip of one generation of a module and its SHA-256, built on first demand."""
    row = _generation_owner(db, module_id, generation)
    folder = InstallFolder(settings.installs_dir, generation)
    target = folder.root / PACKAGE_NAME
    digest_file = folder.root / (PACKAGE_NAME + ".sha256")
    try:
        return target, digest_file.read_text(encoding="ascii").strip()
    except OSError:
        pass  # not built yet: a generation never changes, so once is enough
    if not folder.code.is_dir():
        raise NotFound(f"module {module_id} has no installed generation {generation}")
    _write_package(folder, target, _package_manifest(folder, row, generation))
    digest = sha256_file(target)
    tmp = digest_file.with_name(f"{digest_file.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(digest, encoding="ascii")
    os.replace(tmp, digest_file)
    return target, digest


def _generation_owner(db: Database, module_id: int, generation: str) -> ModuleRow:
    """The module row, when ``generation`` is its current one or one its tasks still use."""
    if not GENERATION.match(generation):
        raise NotFound(f"no generation {generation[:100]!r}")
    with db.read() as session:
        row = session.get(ModuleRow, module_id)
        if row is None:
            raise NotFound(f"no module {module_id}")
        used = session.scalar(
            select(TaskRow.id)
            .where(TaskRow.module_id == module_id, TaskRow.install_dir == generation)
            .limit(1)
        )
        if row.install_dir != generation and used is None:
            raise NotFound(f"module {module_id} has no generation {generation}")
        session.expunge(row)
        return row


def _package_manifest(folder: InstallFolder, row: ModuleRow, generation: str) -> dict[str, Any]:
    try:
        metadata = json.loads(folder.metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # built before generations kept their metadata
        metadata = row.meta if row.install_dir == generation else None
    if not isinstance(metadata, dict):
        raise NotFound(f"generation {generation} has no metadata to send")
    return {
        "module": row.id,
        "generation": generation,
        "metadata": metadata,
        "lock": folder.read_lock() or [],
        "python_version": recorded_version(folder.env),
        # the registration's cutoff: build dependencies of source packages are resolved
        # as of it too, as they were at registration
        "exclude_newer": folder.read_exclude_newer(),
    }


def _write_package(folder: InstallFolder, target: Path, manifest: dict[str, Any]) -> None:
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST_NAME, json.dumps(manifest))
            for path in _code_files(folder.code):
                archive.write(path, "code/" + path.relative_to(folder.code).as_posix())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _code_files(code: Path) -> Iterable[Path]:
    """Regular files under ``code`` (no links: the package never points outside itself)."""
    for base, dirs, files in os.walk(code):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(base) / name
            if path.is_file() and not path.is_symlink():
                yield path


# -- receiving a remote task's files ----------------------------------------------------------


def running(db: Database, task_id: int, worker: str | None) -> None:
    """WrongState unless the task runs (on ``worker`` when the row names one)."""
    found = lifecycle.status_of(db, task_id)
    if found is None:
        raise NotFound(f"no task {task_id}")
    status, runs_on = found
    if status != TaskStatus.RUNNING:
        raise WrongState(f"task {task_id} is {status}: its files can no longer change")
    if worker and runs_on and runs_on != worker:
        raise WrongState(f"task {task_id} runs on worker {runs_on}, not {worker}")


def check_output_name(name: str) -> list[str]:
    """The parts of a relative output path; InvalidInput for anything that could escape."""
    parts = name.split("/")
    if (
        not name
        or len(name) > 1024
        or "\x00" in name
        or "\\" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidInput(f"output name {name[:100]!r} is not a plain relative path", key="name")
    return parts


def receive_output(
    settings: Settings,
    db: Database,
    *,
    task_id: int,
    name: str,
    body: IO[bytes],
    sha256: str,
    worker: str | None = None,
) -> dict[str, Any]:
    """Store one output file of a running remote task, if its checksum matches."""
    parts = check_output_name(name)
    if not SHA256.match(sha256 or ""):
        raise InvalidInput("the header X-Orchestra-Sha256 must hold a hex SHA-256", key="sha256")
    running(db, task_id, worker)
    folder = TaskFolder(settings.tasks_dir, task_id)
    folder.output.mkdir(parents=True, exist_ok=True)
    tmp = folder.root / f".upload-{uuid.uuid4().hex}"
    try:
        size, digest = _copy_hashing(body, tmp)
        if digest != sha256:
            raise InvalidInput(f"checksum mismatch for {name!r}: received {digest}", key="sha256")
        target = _output_target(folder.output, parts)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": name, "size": size, "sha256": digest}


def _copy_hashing(body: IO[bytes], target: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := body.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _output_target(output: Path, parts: list[str]) -> Path:
    """Where an uploaded file goes, its folders made; never outside ``output``."""
    base = output.resolve()
    parent = base.joinpath(*parts[:-1])
    parent.mkdir(parents=True, exist_ok=True)
    real = parent.resolve()
    if real != base and base not in real.parents:
        raise InvalidInput(f"output name {'/'.join(parts)!r} leaves the output folder", key="name")
    target = real / parts[-1]
    if target.is_symlink() or target.is_dir():
        raise WrongState(f"output {'/'.join(parts)!r} exists and is not a file")
    return target


def append_log(
    settings: Settings,
    db: Database,
    *,
    task_id: int,
    stream: str,
    offset: int,
    data: bytes,
    worker: str | None = None,
) -> int:
    """Append a chunk that starts at ``offset`` of a remote task's log; the log's new size.

    A chunk sent again after a lost answer overlaps what is there: only its new part is
    written, so retries never double a line.
    """
    if stream not in LOG_STREAMS:
        raise NotFound(f"no log {stream[:20]!r}: it is stdout or stderr")
    running(db, task_id, worker)
    folder = TaskFolder(settings.tasks_dir, task_id)
    folder.root.mkdir(parents=True, exist_ok=True)
    path = folder.stdout if stream == "stdout" else folder.stderr
    with open(path, "ab") as log:
        size = log.seek(0, os.SEEK_END)
        if offset > size:
            raise WrongState(f"the {stream} log holds {size} bytes; a chunk at {offset} skips some")
        log.write(data[size - offset :])
        return log.tell()
