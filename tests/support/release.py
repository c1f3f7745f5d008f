"""The first landed release of Orchestra, taken from this repository's git history."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.helpers import clean_environ
from tests.support.paths import ROOT
from tests.support.postgres import require_service

FIRST_RELEASE = "66ddf53"  # schema 1, no Alembic; what tests/data/release-1 was made with


def extract(commit: str, destination: Path, *paths: str) -> Path:
    """``paths`` (all when none) as they were at ``commit``, written under ``destination``."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:  # a shallow clone: the release is not in the history
        require_service(f"commit {commit}", "the repository's history does not hold it")
    destination.mkdir(parents=True, exist_ok=True)
    archive = destination.parent / f"{destination.name}.tar"
    with archive.open("wb") as target:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "--", *paths],
            stdout=target, check=True,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    archive.unlink()
    return destination


def install(commit: str, folder: Path, uv_cache: Path) -> Path:
    """The release at ``commit`` installed with its own pinned dependencies into a venv of its
    own under ``folder``; that venv's interpreter."""
    from uv import find_uv_bin

    source = extract(commit, folder / "source")
    venv = folder / "venv"
    env = {**clean_environ(), "UV_CACHE_DIR": str(uv_cache)}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    uv = find_uv_bin()
    subprocess.run(
        [uv, "venv", "--quiet", "--no-config", "--python", sys.executable, str(venv)],
        env=env, check=True,
    )  # fmt: skip
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--no-config", "--python", str(python), str(source)],
        env=env, check=True,
    )  # fmt: skip
    return python
