"""A zip of output files, built while it is sent: stored when a file does not compress.

Deflating bytes that do not compress (random data, images, already compressed archives)
costs the CPU ~16 MB/s and saves nothing; storing them costs only a CRC. Each file is
judged from its own first bytes: a fast deflate of that sample, compared with its size.
"""

from __future__ import annotations

import io
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra.interface import OutputFile, OutputStat

SAMPLE = 64 * 1024  # bytes of each file compressed to judge whether the rest would compress
CHUNK = 256 * 1024  # bytes read from a file at a time
LEVEL = 1  # deflate level for files that compress: the fastest, as `zip -1`
WORTH = 0.9  # deflate when the sample shrinks below this fraction of its size


def compresses(sample: bytes) -> bool:
    """Whether bytes like ``sample`` are worth deflating (an empty sample is not)."""
    if not sample:
        return False
    return len(zlib.compress(sample, LEVEL)) < WORTH * len(sample)


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream whose bytes are taken out as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """Everything written since the last call."""
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def stream(files: Iterable[tuple[str, OutputFile]]) -> Iterator[bytes]:
    """The zip of ``files`` (name in the archive, file), in pieces of about one chunk."""
    # zipfile writes to an unseekable stream with data descriptors, so the archive is sent
    # while it is built: memory stays at one chunk, nothing is written to disk, and the
    # first bytes leave before the last file is read
    sink = _Sink()
    with zipfile.ZipFile(sink, "w") as archive:
        for name, file in files:
            yield from _member(archive, sink, name, file)
    if data := sink.take():
        yield data


def _member(archive: zipfile.ZipFile, sink: _Sink, name: str, file: OutputFile) -> Iterator[bytes]:
    facts = file.stat()
    with file.open("rb") as source:
        first = source.read(SAMPLE)
        # the size known up front lets zipfile choose Zip64 for files of 4 GiB or more
        info = _info(name, facts, deflate=compresses(first))
        with archive.open(info, "w") as target:
            chunk = first
            while chunk:
                target.write(chunk)
                if data := sink.take():
                    yield data
                chunk = source.read(CHUNK)


def _info(name: str, facts: OutputStat, *, deflate: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, time.localtime(facts.st_mtime)[:6])
    info.file_size = facts.st_size
    info.external_attr = (facts.st_mode & 0xFFFF) << 16
    if deflate:
        info.compress_type = zipfile.ZIP_DEFLATED
        info._compresslevel = LEVEL  # type: ignore[attr-defined]  # read by ZipFile.open("w")
    else:
        info.compress_type = zipfile.ZIP_STORED
    return info
