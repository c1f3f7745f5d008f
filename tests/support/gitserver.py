"""Real git repositories for tests, and a real ``git daemon`` serving them on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import free_port, wait_for_port

# commits made by tests do not depend on the machine's git configuration
_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(repo: Path, *args: str, date: str | None = None) -> str:
    """Run ``git -C repo args`` for a test fixture; return its standard output, stripped.

    ``date`` (ISO 8601) is the commit's date, when one is made.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo), **_GIT_ENV}
    if date is not None:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def write_files(folder: Path, files: Mapping[str, str | bytes]) -> None:
    """Write ``files`` (relative path -> text or bytes) below ``folder``."""
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def make_repo(
    path: Path,
    files: Mapping[str, str | bytes],
    *,
    branch: str = "main",
    message: str = "commit",
    date: str | None = None,
) -> str:
    """Commit ``files`` to the repository at ``path`` (created when new); return the sha."""
    if not (path / ".git").exists():
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "--quiet", f"--initial-branch={branch}")
    elif git(path, "branch", "--show-current") != branch:
        git(path, "checkout", "--quiet", "-B", branch)
    write_files(path, files)
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "--allow-empty", "-m", message, date=date)
    return git(path, "rev-parse", "HEAD")


@dataclass(frozen=True)
class GitDaemon:
    """A running ``git daemon`` exporting every repository below ``base`` over git://."""

    base: Path
    port: int

    def url(self, name: str) -> str:
        """The git:// URL of repository ``name`` below ``base``."""
        return f"git://127.0.0.1:{self.port}/{name}"

    def new_repo(self, files: Mapping[str, str | bytes], *, branch: str = "main") -> Path:
        """A new, uniquely named served repository holding ``files`` in one commit."""
        path = self.base / f"repo-{uuid.uuid4().hex[:12]}"
        make_repo(path, files, branch=branch)
        return path


@pytest.fixture(scope="session")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """A real git daemon on a free 127.0.0.1 port for the whole test run."""
    base = tmp_path_factory.mktemp("git-served")
    port = free_port()
    argv = [
        "git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
        f"--port={port}", f"--base-path={base}", "--informative-errors", str(base),
    ]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), **_GIT_ENV}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield GitDaemon(base=base, port=port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
