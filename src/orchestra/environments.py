"""Build a module's virtual environment with uv, and remove a generation.

uv runs with a scrubbed environment, ``--no-config``, an explicit ``--python`` and an empty
working directory, so that nothing but the validated requirement lines (``requirements.py``)
can steer it. It links packages from the shared cache (hardlinks on Linux when the cache and
the data folder share a filesystem), so a second module with the same requirements costs
almost no time or disk. The bytecode is compiled afterwards, in the background
(``compiles.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uv

from orchestra import compiles, sourcebuilds
from orchestra.errors import InstallError
from orchestra.executors import sandbox
from orchestra.interpreters import VERSION_CODE, find_python
from orchestra.process import clean_env, run_checked
from orchestra.requirements import check_requirements

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)

Log = Callable[[str], None]


def uv_env(settings: Settings) -> dict[str, str]:
    """The scrubbed environment uv runs with."""
    extra = {
        "UV_CACHE_DIR": str(settings.uv_cache_dir),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_CONFIG": "1",
        "UV_NO_PROGRESS": "1",
    }
    if settings.index_url:
        # in the environment, not on the command line: an index URL may hold a password,
        # and the command lines go into install logs that clients read
        extra["UV_DEFAULT_INDEX"] = settings.index_url
    return clean_env(extra)


def build_environment(
    env_dir: Path,
    *,
    requirements: list[str],
    python: str | None,
    settings: Settings,
    log: Log,
    exclude_newer: str | None = None,
) -> str:
    """Create the venv at ``env_dir``, install ``requirements``; return the Python version.

    ``exclude_newer`` (an RFC 3339 time) leaves out every file the index got after it.
    """
    lines = check_requirements(requirements, allow_options=settings.allow_requirement_options)
    settings.uv_cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = settings.home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    neutral = Path(tempfile.mkdtemp(prefix=f"uv-{os.getpid()}-", dir=scratch))
    try:
        interpreter = python or find_python(None)
        _create_venv(env_dir, interpreter, settings, neutral, log)
        version = _env_version(env_dir, neutral)
        if lines:
            options = resolution_options(exclude_newer)
            _install(env_dir, lines, settings, neutral, log, options)
        else:
            log("no requirements to install")
        return version
    finally:
        shutil.rmtree(neutral, ignore_errors=True)


def _uv(*args: str) -> list[str]:
    return [uv.find_uv_bin(), *args, "--no-config"]


def _create_venv(env_dir: Path, interpreter: str, settings: Settings, cwd: Path, log: Log) -> None:
    argv = _uv("venv", "--python", interpreter, "--no-python-downloads", str(env_dir))
    log("$ " + " ".join(argv))
    run_checked(
        argv, step="environment", cwd=cwd, env=uv_env(settings),
        timeout=settings.install_timeout, on_line=log,
    )  # fmt: skip


def recorded_version(env_dir: Path) -> str | None:
    """The Python version uv recorded in the environment's pyvenv.cfg, if it did."""
    try:
        for line in (env_dir / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "version_info" and value.strip():
                return value.strip()
    except OSError:
        pass
    return None


def _env_version(env_dir: Path, cwd: Path) -> str:
    # uv records the interpreter's version in pyvenv.cfg; asking the interpreter costs a start
    recorded = recorded_version(env_dir)
    if recorded:
        return recorded
    python = env_dir / "bin" / "python"
    done = run_checked(
        [str(python), "-I", "-c", VERSION_CODE], step="environment", cwd=cwd,
        env=clean_env(), timeout=60,
    )  # fmt: skip
    return done.output.split()[0]


def _install(env_dir: Path, lines: list[str], settings: Settings, cwd: Path, log: Log,
             options: list[str]) -> None:  # fmt: skip
    listing = cwd / "requirements.txt"
    listing.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    argv = _uv("pip", "install", "--python", str(env_dir / "bin" / "python"),
               "--no-python-downloads", "-r", "requirements.txt", *options)  # fmt: skip
    log("requirements: " + ", ".join(lines))
    confined = sandbox.detect(settings.sandbox).active
    # in the sandbox's presence, nothing from outside runs here: wheels only (a source
    # package is built in the sandbox first, below, and its wheel is installed from there)
    argv += ["--no-build"] if confined else []
    if settings.prefer_cached:
        # resolving from the cache alone skips the index round trips (half of a warm
        # install) and reuses the versions other modules already link; whatever the cache
        # cannot satisfy is resolved again online below
        try:
            _run_uv([*argv, "--offline"], settings, cwd, log)
            return
        except InstallError:
            log("the cache does not hold everything: resolving online")
    try:
        _run_uv(argv, settings, cwd, log)
    except InstallError:
        if not confined:
            raise
        log("some requirement needs building from source: building it in the sandbox")
        wheels = _build_in_sandbox(env_dir, settings, cwd, log, options)
        _run_uv([*argv, "--offline", "--find-links", str(wheels)], settings, cwd, log)


def _build_in_sandbox(
    env_dir: Path, settings: Settings, cwd: Path, log: Log, options: list[str]
) -> Path:
    """Build the requirements in a scratch environment in the sandbox; return their wheels."""
    interpreter = str((env_dir / "bin" / "python").resolve())
    scratch = cwd / "build-env"
    argv = _uv("venv", "--python", interpreter, "--no-python-downloads", str(scratch))
    run_checked(argv, step="install", cwd=cwd, env=uv_env(settings), timeout=60)
    install = _uv("pip", "install", "--python", str(scratch / "bin" / "python"),
                  "--no-python-downloads", "-r", "requirements.txt", *options)  # fmt: skip
    wheels = sourcebuilds.build_wheels(
        scratch, install, settings=settings, cwd=cwd,
        run=lambda argv: _run_uv(argv, settings, cwd, log),
    )  # fmt: skip
    log("built in the sandbox: " + (", ".join(p.name for p in sorted(wheels.iterdir())) or "-"))
    return wheels


def resolution_options(exclude_newer: str | None) -> list[str]:
    """uv's options for as of when requirements are resolved (the index is in ``uv_env``)."""
    return ["--exclude-newer", exclude_newer] if exclude_newer else []


def _run_uv(argv: list[str], settings: Settings, cwd: Path, log: Log) -> None:
    log("$ " + " ".join(argv))
    run_checked(
        argv, step="install", cwd=cwd, env=uv_env(settings),
        timeout=settings.install_timeout, on_line=log,
    )  # fmt: skip


def freeze(env_dir: Path, settings: Settings) -> list[str]:
    """The exact versions installed in ``env_dir`` (``name==version`` lines): its lock."""
    scratch = settings.home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    neutral = Path(tempfile.mkdtemp(prefix=f"uv-{os.getpid()}-", dir=scratch))
    try:
        argv = _uv("pip", "freeze", "--quiet", "--python", str(env_dir / "bin" / "python"))
        done = run_checked(
            argv, step="lock", cwd=neutral, env=uv_env(settings), timeout=settings.install_timeout
        )
    finally:
        shutil.rmtree(neutral, ignore_errors=True)
    return [line.strip() for line in done.output.splitlines() if line.strip()]


def remove_generation(generation: Path) -> None:
    """Delete a generation folder, stopping its bytecode compilation first."""
    if not generation.exists():
        return
    compiles.stop_bytecode_compile(generation)
    for _attempt in range(3):
        shutil.rmtree(generation, ignore_errors=True)
        if not generation.exists():
            return
        time.sleep(0.1)
    _LOGGER.warning("could not remove %s completely", generation)
