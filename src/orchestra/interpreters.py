"""Finding a Python interpreter of a given version on this machine (PATH, then pyenv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from orchestra.errors import InstallError
from orchestra.process import clean_env

# what an interpreter is asked, to learn its version and its real executable
VERSION_CODE = "import platform, sys; print(platform.python_version()); print(sys.executable)"


def find_python(version: str | None) -> str:
    """The interpreter for ``version`` ("3.10"), or the one running Orchestra when None."""
    if version is None:
        return _running_interpreter()
    for candidate in _candidates(version):
        found = _probe(candidate)
        if found and _matches(found[0], version):
            return found[1]
    available = ", ".join(available_pythons()) or "none found"
    raise InstallError(
        "python",
        f"Python {version} is not available on this machine (available: {available})",
    )


def _running_interpreter() -> str:
    # inside a venv sys.executable is a symlink farm; uv wants the real base interpreter
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(Path(base).resolve())


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _candidates(version: str) -> list[str]:
    parts = version.split(".")
    short = ".".join(parts[:2])
    names = [f"python{short}"] if len(parts) >= 2 else [f"python{parts[0]}"]
    found: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        for name in names:
            path = Path(folder or ".") / name
            if os.access(path, os.X_OK):
                found.append(str(path))
    pyenv = sorted((_pyenv_root() / "versions").glob(f"{version}*/bin/{names[0]}"), reverse=True)
    return found + [str(p) for p in pyenv]


def _probe(executable: str) -> tuple[str, str] | None:
    """(version, real executable) as the interpreter itself reports them."""
    try:
        done = subprocess.run(
            [executable, "-I", "-c", VERSION_CODE],
            capture_output=True, text=True, timeout=20, env=clean_env(), check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        return None
    return lines[0], lines[1]


def _matches(reported: str, wanted: str) -> bool:
    return reported.split(".")[: len(wanted.split("."))] == wanted.split(".")


def available_pythons() -> list[str]:
    """The Python versions this machine offers (PATH and pyenv), as "3.x.y"."""
    versions: set[str] = set()
    names = {p.name for p in (_pyenv_root() / "versions").glob("*") if (p / "bin").is_dir()}
    versions.update(n for n in names if re.match(r"^\d+\.\d+\.\d+$", n))
    for minor in range(6, 20):
        path = shutil.which(f"python3.{minor}")
        if path and not any(v.startswith(f"3.{minor}.") for v in versions):
            found = _probe(path)
            if found:
                versions.add(found[0])
    return sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
