"""Zips of output files built while sent: stored when a file does not compress."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from orchestra import zipstream


def _files(tmp_path: Path) -> list[tuple[str, Path]]:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(3 * zipstream.CHUNK + 17))
    text = tmp_path / "series.csv"
    text.write_text(
        "".join(f"2026-01-01T00:{i % 60:02d}:00,{i * 0.25:.2f}\n" for i in range(40_000))
    )
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    return [("noise.bin", noise), ("sub/series.csv", text), ("empty.txt", empty)]


def test_random_bytes_are_stored_and_text_is_deflated(tmp_path: Path) -> None:
    files = _files(tmp_path)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(zipstream.stream(files))))
    assert archive.testzip() is None  # every member's CRC checks out
    kinds = {info.filename: info.compress_type for info in archive.infolist()}
    assert kinds == {
        "noise.bin": zipfile.ZIP_STORED,
        "sub/series.csv": zipfile.ZIP_DEFLATED,
        "empty.txt": zipfile.ZIP_STORED,
    }
    for name, path in files:
        assert archive.read(name) == path.read_bytes()
    series = archive.getinfo("sub/series.csv")
    assert series.compress_size < series.file_size / 2


def test_the_zip_leaves_in_pieces_of_about_one_chunk(tmp_path: Path) -> None:
    files = _files(tmp_path)
    pieces = list(zipstream.stream(files))
    # memory stays at a chunk or so whatever the files' sizes: nothing is held back
    assert len(pieces) >= 4  # the noise alone is more than three chunks
    assert max(len(piece) for piece in pieces) <= zipstream.CHUNK + 4096


def test_the_sample_decides_what_is_worth_deflating() -> None:
    assert zipstream.compresses(b"2026-01-01,1.5\n" * 1000)
    assert not zipstream.compresses(os.urandom(zipstream.SAMPLE))
    assert not zipstream.compresses(b"")
