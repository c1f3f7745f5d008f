"""Source packages built in the sandbox, into wheels the environment then installs.

Where the sandbox works, nothing from outside runs outside it, so an environment is
installed with building disabled (``--no-build``). A requirement the index offers only as a
source archive is built in the sandbox instead: its requirements go into a scratch
environment there, where uv builds what it must into the shared cache. uv then still refuses
those wheels when building is disabled (it takes a wheel it built from an index's archive
only together with the archive), so the wheels built for the scratch environment's packages
are collected from the cache into a folder of the registration's own, which the final,
unsandboxed install reads with ``--find-links``, building still disabled. Collecting them is
reading files: nothing the build made runs outside the sandbox.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.errors import InstallError
from orchestra.executors import sandbox
from orchestra.process import tail

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
Log = Callable[[str], None]
UvRunner = Callable[[list[str]], None]
WHEELS = "wheels"  # the registration's own folder of wheels built in the sandbox
# uv's words for a failed build: "Failed to build `name==version`"; the build's own output
# follows, indented, until uv's hint
_FAILED_BUILD = re.compile(r"Failed to build `([^`]+)`")
_BUILD_LINES = 15  # lines of a failed build's own output shown in the error


def normalize(name: str) -> str:
    """A project's name as indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheels(
    scratch_env: Path, install: list[str], *, settings: Settings, cwd: Path, run: UvRunner
) -> Path:
    """Run uv's ``install`` argv into ``scratch_env`` in the sandbox; return the built wheels.

    ``install`` reads ``requirements.txt`` in ``cwd``; the wheels land in ``cwd/wheels``.
    """
    interpreter = str((scratch_env / "bin" / "python").resolve())
    prefix = sandbox.installer_argv(settings, workdir=cwd, interpreter=interpreter,
                                    uv_bin=install[0])  # fmt: skip
    try:
        run([*prefix, *install])
    except InstallError as exc:
        raise build_failure(exc) from exc
    wheels = cwd / WHEELS
    collect_built(installed(scratch_env), settings.uv_cache_dir, wheels)
    return wheels


def build_failure(exc: InstallError) -> InstallError:
    """The error of a failed build: the package it names and the build's own last lines."""
    match = _FAILED_BUILD.search(exc.log)
    if match is None:
        return exc  # not a build (a version that does not exist, an index out of reach)
    lines = exc.log[match.end() :].splitlines()
    own = [line.strip() for line in lines if line.startswith("  ") and line.strip()]
    own = [line for line in own if not line.startswith(("cause:", "[stderr]", "[stdout]"))]
    shown = tail("\n".join(own), _BUILD_LINES) or tail(exc.log)
    return InstallError(
        "install", f"building {match.group(1)} from its source failed:\n{shown}", log=exc.log
    )


def installed(env: Path) -> set[tuple[str, str]]:
    """The (normalised name, version) of each distribution in ``env``, from folder names."""
    found = set()
    # the folders' names only: nothing of the scratch environment runs out here
    for info in env.glob("lib/python*/site-packages/*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        if version:
            found.add((normalize(name), version))
    return found


def collect_built(dists: Iterable[tuple[str, str]], cache: Path, target: Path) -> list[str]:
    """Link the wheels uv built from source for ``dists`` out of its ``cache`` into ``target``."""
    wanted = set(dists)
    target.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, Path] = {}
    for wheel in _built_wheels(cache):
        parts = wheel.name.split("-")
        if len(parts) < 5 or (normalize(parts[0]), parts[1]) not in wanted:
            continue
        known = chosen.get(wheel.name)
        if known is None or wheel.stat().st_mtime > known.stat().st_mtime:
            chosen[wheel.name] = wheel
    for name, wheel in chosen.items():
        _link(wheel, target / name)
    _LOGGER.debug("wheels built from source: %s", sorted(chosen))
    return sorted(chosen)


def _built_wheels(cache: Path) -> Iterator[Path]:
    # uv keeps a wheel it built from an index's archive beside the unpacked source, as
    # sdists-v*/pypi/<name>/<version>/<revision>/<wheel> for PyPI and
    # sdists-v*/index/<index>/<name>/<version>/<revision>/<wheel> for any other index. Its
    # cache is versioned with uv itself (pinned in pyproject.toml); the tests build through
    # the second form, a registration from PyPI through the first
    for pattern in ("sdists-v*/pypi/*/*/*/*.whl", "sdists-v*/index/*/*/*/*/*.whl"):
        yield from cache.glob(pattern)


def _link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)
