"""Build a module's virtual environment with uv: the interpreter, the requirements, the log.

uv runs with a scrubbed environment, ``--no-config``, an explicit ``--python`` and an empty
working directory, so that nothing but the validated requirement lines can steer it. It
links packages from the shared cache (hardlinks on Linux when the cache and the data folder
share a filesystem), so a second module with the same requirements costs almost no time or
disk.

Bytecode: uv does not compile ``.pyc`` files, and compiling during the install would slow
every registration by seconds (pandas: ~2 s on a quiet machine, 10 s and more on a busy
one). Instead, once a generation is registered, ``start_bytecode_compile`` compiles it in a
detached background process at a lower priority (its pid is kept in the generation folder so
that removing the generation can stop it first). The compilation goes into the shared cache
(``bytecode.py``): each package version is compiled once, and every later environment gets
the ``.pyc`` files through uv's links along with the sources, so a fresh module's first run
is as fast as its hundredth. Tasks run without ``PYTHONDONTWRITEBYTECODE``, so whatever is
still missing is compiled by the first run that imports it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uv

from orchestra import bytecode
from orchestra.errors import InstallError, InvalidInput
from orchestra.executors import proctree, sandbox
from orchestra.process import clean_env, run_checked

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.manifest import Manifest
    from orchestra.storage.files import InstallFolder

_LOGGER = logging.getLogger(__name__)

Log = Callable[[str], None]
REQUIREMENTS_FILE = "requirements.txt"
COMPILE_PID_FILE = "compile.pid"
# the background compilations this process started, by pid, until they are reaped
_OWN_COMPILES: dict[int, subprocess.Popen[bytes]] = {}
_OWN_LOCK = threading.Lock()
_VERSION_CODE = "import platform, sys; print(platform.python_version()); print(sys.executable)"
# a requirement names a project first; paths, URLs and options start otherwise
_PROJECT_FIRST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


# -- requirements --------------------------------------------------------------------------


def read_requirements(root: Path, manifest: Manifest, settings: Settings) -> list[str]:
    """The module's requirement lines, checked.

    ``install.requirements_file`` (older modules) and ``install.requirements`` are merged,
    the file's lines first; with neither, ``requirements.txt`` when the module has one.
    """
    lines: list[str] = []
    if manifest.requirements_file:
        lines += _read_module_file(root, manifest.requirements_file, "install.requirements_file")
    declared = manifest.requirements
    if isinstance(declared, tuple):
        lines += declared
    elif isinstance(declared, str):
        lines += _read_module_file(root, declared, "install.requirements")
    elif not manifest.requirements_file and (root / REQUIREMENTS_FILE).is_file():
        lines += _read_module_file(root, REQUIREMENTS_FILE, "install.requirements")
    return check_requirements(lines, allow_options=settings.allow_requirement_options)


def _read_module_file(root: Path, name: str, key: str) -> list[str]:
    from orchestra.sources.folder import resolve_inside

    return _read_lines(resolve_inside(root, name, key), key)


def _read_lines(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise InvalidInput(f"{key}: {path.name} is not a file in the module", key=key)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{key}: cannot read {path.name}: {exc}", key=key) from exc
    # a trailing backslash continues a requirement on the next line
    return text.replace("\\\n", " ").splitlines()


def check_requirements(lines: Sequence[str], *, allow_options: bool = False) -> list[str]:
    """Drop comments and blank lines; refuse options, paths and ``${VAR}`` unless allowed."""
    kept: list[str] = []
    problems: list[str] = []
    for raw in lines:
        line = re.split(r"(^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        problem = None if allow_options else _requirement_problem(line)
        if problem:
            problems.append(f"{line[:100]!r} {problem}")
        kept.append(line)
    if problems:
        raise InvalidInput(
            "install.requirements: " + "; ".join(problems) + " (only requirement lines such "
            "as 'numpy>=1.24' are accepted)",
            key="install.requirements",
        )
    return kept


def _requirement_problem(line: str) -> str | None:
    if "\x00" in line or "\n" in line:
        return "contains control characters"
    if line.startswith("-"):
        return "is an installer option"
    if "${" in line:
        return "refers to an environment variable"
    if not _PROJECT_FIRST.match(line):
        return "is not a requirement (it must start with a project name)"
    if re.search(r"@\s*file:", line):
        return "refers to a local file"
    return None


# -- interpreters --------------------------------------------------------------------------


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
            [executable, "-I", "-c", _VERSION_CODE],
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


# -- building ------------------------------------------------------------------------------


def uv_env(settings: Settings) -> dict[str, str]:
    """The scrubbed environment uv runs with."""
    return clean_env(
        {
            "UV_CACHE_DIR": str(settings.uv_cache_dir),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_CONFIG": "1",
            "UV_NO_PROGRESS": "1",
        }
    )


def build_environment(
    env_dir: Path,
    *,
    requirements: list[str],
    python: str | None,
    settings: Settings,
    log: Log,
) -> str:
    """Create the venv at ``env_dir``, install ``requirements``; return the Python version."""
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
            _install(env_dir, lines, settings, neutral, log)
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
        [str(python), "-I", "-c", _VERSION_CODE], step="environment", cwd=cwd,
        env=clean_env(), timeout=60,
    )  # fmt: skip
    return done.output.split()[0]


def _install(env_dir: Path, lines: list[str], settings: Settings, cwd: Path, log: Log) -> None:
    listing = cwd / "requirements.txt"
    listing.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    argv = _uv("pip", "install", "--python", str(env_dir / "bin" / "python"),
               "--no-python-downloads", "-r", "requirements.txt")  # fmt: skip
    log("requirements: " + ", ".join(lines))
    confined = sandbox.detect(settings.sandbox).active
    # in the sandbox's presence, nothing from outside runs here: wheels only (a source
    # package is built in the sandbox first, below, and its wheel then comes from the cache)
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
        _build_in_sandbox(env_dir, settings, cwd, log)
        _run_uv([*argv, "--offline"], settings, cwd, log)


def _build_in_sandbox(env_dir: Path, settings: Settings, cwd: Path, log: Log) -> None:
    """Install the requirements into a scratch environment in the sandbox, filling the cache."""
    interpreter = str((env_dir / "bin" / "python").resolve())
    scratch = cwd / "build-env"
    argv = _uv("venv", "--python", interpreter, "--no-python-downloads", str(scratch))
    run_checked(argv, step="install", cwd=cwd, env=uv_env(settings), timeout=60)
    install = _uv("pip", "install", "--python", str(scratch / "bin" / "python"),
                  "--no-python-downloads", "-r", "requirements.txt")  # fmt: skip
    prefix = sandbox.installer_argv(
        settings, workdir=cwd, interpreter=interpreter, uv_bin=install[0]
    )
    _run_uv([*prefix, *install], settings, cwd, log)


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


# -- bytecode ------------------------------------------------------------------------------


def start_bytecode_compile(folder: InstallFolder, settings: Settings) -> int | None:
    """Compile a generation's bytecode in a detached background process (see bytecode.py)."""
    sites = site_packages(folder.env)
    if not sites:
        return None
    script = Path(bytecode.__file__)
    archives = settings.uv_cache_dir / "archive-v0"
    argv = [str(folder.python), "-I", str(script), str(sites[0]), str(archives), str(folder.code)]
    nice = shutil.which("nice")
    if nice:
        # below running tasks in priority: it must not slow down modules already serving
        argv = [nice, "-n", "10", *argv]
    try:
        proc = subprocess.Popen(
            argv, cwd=folder.root, env=clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        _LOGGER.warning("cannot start bytecode compilation in %s: %s", folder.root, exc)
        return None
    try:
        (folder.root / COMPILE_PID_FILE).write_text(str(proc.pid))
    except OSError:  # the generation was removed already: the compile sees it and ends
        pass
    with _OWN_LOCK:
        _OWN_COMPILES[proc.pid] = proc
    # reap it in this process when it ends, so no zombie stays behind in a long-lived server
    threading.Thread(target=_reap, args=(proc,), name=f"compile-{proc.pid}", daemon=True).start()
    return proc.pid


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    with _OWN_LOCK:
        _OWN_COMPILES.pop(proc.pid, None)


def stop_own_compiles(timeout: float = 5.0) -> int:
    """Stop the background compilations this process started (a server that stops); how many."""
    with _OWN_LOCK:
        procs = list(_OWN_COMPILES.values())
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: nice, python and workers
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _LOGGER.warning("bytecode compilation %s did not stop", proc.pid)
    return len(procs)


def site_packages(env_dir: Path) -> list[Path]:
    """The environment's site-packages folders."""
    return sorted(env_dir.glob("lib/python*/site-packages"))


def bytecode_pending(generation: Path) -> bool:
    """Whether the background compilation of ``generation`` is still running."""
    try:
        pid = int((generation / COMPILE_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    return _is_compile_of(pid, generation)


def wait_for_bytecode(generation: Path, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until ``generation`` is compiled; True when it is."""
    deadline = time.monotonic() + timeout
    while bytecode_pending(generation):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_bytecode_compile(generation: Path, *, timeout: float = 5.0) -> None:
    """Stop the background compilation of ``generation`` if it is still running."""
    pid_file = generation / COMPILE_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _is_compile_of(pid, generation):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while _is_compile_of(pid, generation) and time.monotonic() < deadline:
        time.sleep(0.02)


def _is_compile_of(pid: int, generation: Path) -> bool:
    # the pid may have been reused since: it must have started before its pid file was written
    # (the command line is no proof: it changes while ``nice`` hands over to Python)
    try:
        written = (generation / COMPILE_PID_FILE).stat().st_mtime
    except OSError:
        return False
    return proctree.alive_since(pid, written)


def remove_generation(generation: Path) -> None:
    """Delete a generation folder, stopping its bytecode compilation first."""
    if not generation.exists():
        return
    stop_bytecode_compile(generation)
    for _attempt in range(3):
        shutil.rmtree(generation, ignore_errors=True)
        if not generation.exists():
            return
        time.sleep(0.1)
    _LOGGER.warning("could not remove %s completely", generation)
