"""A module's requirement lines: read from its metadata or files, and checked.

Only plain requirement lines (``numpy>=1.24``) reach the installer: options, paths, URLs to
local files and environment variables are refused unless the server allows them, since a
requirement line would otherwise steer what uv reads and runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.errors import InvalidInput

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.manifest import Manifest

REQUIREMENTS_FILE = "requirements.txt"
# a requirement names a project first; paths, URLs and options start otherwise
_PROJECT_FIRST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


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
