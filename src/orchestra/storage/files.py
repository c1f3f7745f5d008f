"""The on-disk layout under the data folder, and joins that cannot escape it."""

from __future__ import annotations

import os
from pathlib import Path

from orchestra.errors import NotFound


def tail_text(path: Path, max_bytes: int) -> str:
    """The end of a text file, at most ``max_bytes`` of it, never loading the whole file."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def safe_join(base: Path, relative: str) -> Path:
    """``base/relative`` with symlinks resolved; NotFound when it would leave ``base``."""
    if not relative or "\x00" in relative or os.path.isabs(relative):
        raise NotFound(f"no such file: {relative!r}")
    root = base.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise NotFound(f"no such file: {relative!r}")
    return target


class TaskFolder:
    """One task's folder: logs, output and the supervisor's record of the task."""

    def __init__(self, tasks_dir: Path, task_id: int) -> None:
        self.root = tasks_dir / str(task_id)

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def result(self) -> Path:
        return self.root / "result.json"


def site_packages(env_dir: Path) -> list[Path]:
    """A virtual environment's site-packages folders."""
    return sorted(env_dir.glob("lib/python*/site-packages"))


class InstallFolder:
    """One installed generation of a module: its code and its environment."""

    def __init__(self, installs_dir: Path, name: str) -> None:
        self.root = installs_dir / name

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def python(self) -> Path:
        return self.env / "bin" / "python"

    @property
    def log(self) -> Path:
        return self.root / "install.log"

    @property
    def lock(self) -> Path:
        """The exact package versions the environment holds, one ``name==version`` a line."""
        return self.root / "lock.txt"

    @property
    def metadata(self) -> Path:
        """The module's metadata as this generation was built from it."""
        return self.root / "metadata.json"

    @property
    def exclude_newer(self) -> Path:
        """The upload time after which the index's files were ignored, when one applied."""
        return self.root / "exclude-newer.txt"

    def read_exclude_newer(self) -> str | None:
        """The recorded cutoff (RFC 3339), or None."""
        try:
            return self.exclude_newer.read_text(encoding="ascii").strip() or None
        except OSError:
            return None

    def read_lock(self) -> list[str] | None:
        """The recorded lock, or None for a generation built before locks were recorded."""
        try:
            return [line for line in self.lock.read_text(encoding="utf-8").splitlines() if line]
        except OSError:
            return None
