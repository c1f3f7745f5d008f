"""Model files on disk: stored once by content, each version a folder of links to them.

Layout under ``ORCHESTRA_HOME/models``: ``blobs/<2 hex>/<sha256>`` holds each distinct file
once (read-only); ``versions/<module>/<n>/`` is a version's tree, every file a hard link to
its blob, so a version's folder is given to a task as it is (mounted read-only) and costs no
space of its own. A training's files are hashed as they are read and linked into the store
where the file system allows it (copied, still hashed on the way, where it does not).

A version's digest is ``sha256:`` and the SHA-256 of the lines ``<sha256 of a file>  <its
relative path>`` sorted by path, each ending in a newline: what ``sha256sum`` prints for the
folder, so that anyone can check a downloaded version with standard tools.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestra.errors import OrchestraError

_LOGGER = logging.getLogger(__name__)
_CHUNK = 1024 * 1024  # bytes hashed or copied at a time
_HASHERS = min(4, os.cpu_count() or 1)  # files hashed at once while a model is stored
NO_MODEL = "the training wrote no model"
SHA256 = re.compile(r"[0-9a-f]{64}")
_STAGED = ".staged-"  # a version's folder of links made while its files are stored
_STAGED_FOR = 3600.0  # seconds after which a staged folder is left over, not in use
_FAN_OUT = tuple(f"{n:02x}" for n in range(256))  # the blobs' folders, by a hash's first byte
Entry = tuple[str, str, int]  # relative path, sha256 hex of its content, size in bytes


class ModelProblem(OrchestraError):
    """A model folder that cannot become a version (a link in it, nothing in it, ...)."""

    http_status = 400
    exit_code = 2


@dataclass(frozen=True)
class Stored:
    """What a model folder holds, its files in the store: digest, size, entries by path."""

    digest: str
    size: int
    contents: tuple[Entry, ...]
    staged: Path | None = None  # the version's folder of links, made while the files were stored


def digest_of(contents: Iterable[Entry]) -> str:
    """The version digest of ``contents`` (see the module's docstring)."""
    lines = "".join(f"{sha}  {path}\n" for path, sha, _ in sorted(contents))
    return "sha256:" + hashlib.sha256(lines.encode("utf-8")).hexdigest()


class ModelStore:
    """The blobs and the versions' folders of one data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.versions = root / "versions"

    def blob(self, sha: str) -> Path:
        """Where the file whose content hashes to ``sha`` is (or would be) kept."""
        return self.blobs / sha[:2] / sha

    def version_dir(self, module_id: int, version: int) -> Path:
        """A version's folder of links."""
        return self.versions / str(module_id) / str(version)

    # -- storing ----------------------------------------------------------------------------

    def ingest(self, folder: Path) -> Stored:
        """Every file of a training's model folder into the store; ModelProblem if refused."""
        found = scan(folder)
        self._fan_out()
        staged = self._staging(rel for rel, _ in found)
        try:
            entries = _side_by_side(lambda item: self._ingest_file(*item, staged), found)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return dataclasses.replace(_stored(entries), staged=staged)

    def _staging(self, rels: Iterable[str]) -> Path:
        """A version's folder to be, its subfolders made, that storing the files fills."""
        self._sweep_staging()
        staged = self.versions / f"{_STAGED}{uuid.uuid4().hex}"
        for parent in sorted({os.path.dirname(rel) for rel in rels}):
            (staged / parent).mkdir(parents=True, exist_ok=True)
        return staged

    def _sweep_staging(self) -> None:
        """Remove staged folders that a server stopped mid-way left (their links hold space)."""
        try:
            entries = list(os.scandir(self.versions))
        except FileNotFoundError:
            return
        old = time.time() - _STAGED_FOR
        for entry in entries:
            if entry.name.startswith(_STAGED) and entry.stat().st_mtime < old:
                shutil.rmtree(entry.path, ignore_errors=True)

    def unstage(self, stored: Stored) -> None:
        """Remove the folder ``ingest`` staged if no version took it (a failed or lost race)."""
        if stored.staged is not None:
            shutil.rmtree(stored.staged, ignore_errors=True)

    def _fan_out(self) -> None:
        """The blobs' 256 folders, made once for the store rather than one by one as it fills."""
        if (self.blobs / _FAN_OUT[-1]).is_dir():
            return
        for name in _FAN_OUT:
            (self.blobs / name).mkdir(parents=True, exist_ok=True)

    def _ingest_file(self, rel: str, path: Path, staged: Path) -> Entry:
        # the training has ended: its file becomes the blob itself, sealed before it shows
        sha, size = _hash_file(path, seal=True)
        # paths as strings: building Path objects cost more than the links (400 files: ~10 ms)
        target = f"{self.blobs}/{sha[:2]}/{sha}"
        try:
            os.link(path, target)  # the same disk: no copy at all
        except FileExistsError:
            pass  # stored already (the same content: its name is its hash)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            self._copy_in(path, sha)
        # the version's link now, while the other files hash, rather than in a pass of its own
        _link_or_copy(target, f"{staged}/{rel}")
        return rel, sha, size

    def _copy_in(self, path: Path, sha: str) -> None:
        """A file that cannot be linked into the store (another disk), copied and sealed."""
        target = self.blob(sha)
        tmp = target.with_name(f".{sha}.{uuid.uuid4().hex}")
        try:
            shutil.copyfile(path, tmp)
            self._seal(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def receive(self, sha: str, chunks: Iterator[bytes]) -> int:
        """A file sent in ``chunks`` (a worker's upload), kept if its content hashes to ``sha``."""
        target = self.blob(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{sha}.{uuid.uuid4().hex}")
        hasher, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if hasher.hexdigest() != sha:
                raise ModelProblem(f"the file sent does not hash to {sha}")
            self._seal(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _seal(self, tmp: Path, target: Path) -> None:
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)  # a concurrent store of the same content wrote the same bytes

    def check_sent(self, contents: Any, digest: Any) -> Stored:
        """A worker's list of its training's files, each already here, matching ``digest``."""
        entries: list[Entry] = []
        if not isinstance(contents, list) or not contents:
            raise ModelProblem(NO_MODEL)
        for item in contents:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                raise ModelProblem("contents: each file is [path, sha256, size]")
            rel, sha, size = item
            if _unsafe(rel) or not SHA256.fullmatch(str(sha)) or not self.blob(sha).is_file():
                raise ModelProblem(f"contents: {str(rel)[:200]!r} is not here or not a safe path")
            if self.blob(sha).stat().st_size != size:
                raise ModelProblem(f"contents: {rel!r} does not have the size sent")
            entries.append((rel, sha, size))
        stored = _stored(entries)
        if stored.digest != digest:
            raise ModelProblem(f"the files sent make {stored.digest}, not {digest}")
        return stored

    def materialize(self, module_id: int, version: int, stored: Stored) -> Path:
        """Put a version's folder of links to its blobs in place (the staged one if any)."""
        final = self.version_dir(module_id, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # left by an interrupted attempt: its number is ours now
            shutil.rmtree(final)
        if stored.staged is not None:
            try:
                os.replace(stored.staged, final)
                return final
            except FileNotFoundError:  # taken by another settler of the same training
                pass
        tmp = self._links(final.with_name(f".{version}.{uuid.uuid4().hex}"), stored)
        try:
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _links(self, tmp: Path, stored: Stored) -> Path:
        """A folder at ``tmp`` of links to the blobs of ``stored``."""
        try:
            tmp.mkdir(parents=True)
            made = {tmp}
            for rel, sha, _ in stored.contents:
                path = tmp / rel
                if path.parent not in made:  # one mkdir per folder, not one per file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent)
                _link_or_copy(self.blob(sha), path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    # -- freeing ----------------------------------------------------------------------------

    def drop_version(self, module_id: int, version: int) -> None:
        """Remove a version's folder (its blobs are freed by ``free``)."""
        shutil.rmtree(self.version_dir(module_id, version), ignore_errors=True)

    def drop_module(self, module_id: int) -> None:
        """Remove every version folder of a module."""
        shutil.rmtree(self.versions / str(module_id), ignore_errors=True)

    def free(self, candidates: Iterable[str], in_use: set[str]) -> int:
        """Delete the blobs among ``candidates`` that no version uses; how many."""
        freed = 0
        for sha in set(candidates) - in_use:
            try:
                self.blob(sha).unlink()
                freed += 1
            except FileNotFoundError:
                pass
        return freed


def _unsafe(rel: Any) -> bool:
    """Whether a relative path sent from elsewhere could leave its folder."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    return (
        len(rel) > 1024 or "\x00" in rel or "\\" in rel or any(p in ("", ".", "..") for p in parts)
    )


def scan(folder: Path) -> list[tuple[str, Path]]:
    """The regular files below ``folder`` by relative path; ModelProblem for a link or nothing."""
    found: list[tuple[str, Path]] = []
    _scan(folder, "", found)
    if not found:
        raise ModelProblem(NO_MODEL)
    return sorted(found)


def _scan(folder: Path, prefix: str, found: list[tuple[str, Path]]) -> None:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            # never followed: a link could lead anywhere on this machine
            target = os.readlink(entry.path)
            raise ModelProblem(f"the model folder holds a link: {rel} -> {target}")
        if stat.S_ISDIR(mode):
            _scan(Path(entry.path), f"{rel}/", found)
        elif stat.S_ISREG(mode):
            found.append((rel, Path(entry.path)))
        else:
            raise ModelProblem(f"the model folder holds something that is not a file: {rel}")


def _hash_file(path: Path, seal: bool = False) -> tuple[str, int]:
    """A file's SHA-256 and size; with ``seal``, made read-only through the same handle."""
    with open(path, "rb", buffering=0) as source:
        digest = hashlib.file_digest(source, "sha256")  # one reused buffer, no copies
        if seal:
            os.fchmod(source.fileno(), 0o444)
        return digest.hexdigest(), source.tell()


def _side_by_side(
    work: Callable[[tuple[str, Path]], Entry], found: list[tuple[str, Path]]
) -> list[Entry]:
    """``work`` on each file, files side by side on the machine's cores.

    Hashing is the cost of storing a model (its files are linked, not copied), and hashlib
    lets go of the GIL while it hashes large buffers, so threads hash on every core.
    """
    with ThreadPoolExecutor(max_workers=_HASHERS) as pool:
        return list(pool.map(work, found))


def _stored(entries: Iterable[Entry]) -> Stored:
    contents = tuple(sorted(entries))
    return Stored(digest_of(contents), sum(e[2] for e in contents), contents)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)


def hash_folder(folder: Path) -> Stored:
    """The digest of a folder as it is, nothing stored (a worker checking what it holds)."""
    return _stored(_side_by_side(lambda item: (item[0], *_hash_file(item[1])), scan(folder)))


def write_zip(files: Iterable[tuple[str, Path]], target: Path) -> None:
    """The files as a zip at ``target``, through a temporary file (no partial zip left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, path in files:
                archive.write(path, name)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def zip_digest(archive: zipfile.ZipFile) -> str:
    """The version digest of a downloaded zip's members (see the module's docstring)."""
    entries = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        hasher = hashlib.sha256()
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                hasher.update(chunk)
        entries.append((info.filename, hasher.hexdigest(), info.file_size))
    return digest_of(entries)
