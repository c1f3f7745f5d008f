"""The code blocks of a Markdown page that its tests run, as marked in the page itself.

A fenced block preceded by ``<!-- docs-test: KIND -->`` is one step:

- ``file``: its text is written to the path its fence's ``title="…"`` names;
- ``append``: its text is added at the end of that file;
- ``run``: its text runs with bash, after the ``export`` lines of the earlier ``run`` steps;
- ``serve``: its first command starts a server, stopped once the page's steps are done.

``<!-- docs-test: KIND on MACHINE -->`` also names the machine the step is for, on a page
that sets up several (docs/several-machines.md).

Blocks without a marker (output samples, steps that need what is not built yet) are only read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_MARKER = re.compile(r"^<!-- docs-test: (file|append|run|serve)(?: on ([\w-]+))? -->$")
_FENCE = re.compile(r"^(`{3,})(.*)$")
_TITLE = re.compile(r'title="([^"]+)"')


@dataclass(frozen=True)
class Step:
    """One marked code block."""

    kind: str
    text: str
    title: str = ""
    machine: str = ""

    @property
    def first_command(self) -> str:
        """The block's first command line, without its comment."""
        for line in self.text.splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                return command
        raise AssertionError(f"no command in {self.text!r}")


def steps(page: Path) -> list[Step]:
    """The marked blocks of ``page``, in order."""
    found: list[Step] = []
    lines = page.read_text().splitlines()
    kind, machine = "", ""
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i].strip())
        fence = _FENCE.match(lines[i])
        if marker:
            kind, machine = marker.group(1), marker.group(2) or ""
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == fence.group(1))
            if kind:
                title = _TITLE.search(fence.group(2))
                text = "\n".join(lines[i + 1 : end]) + "\n"
                found.append(Step(kind, text, title.group(1) if title else "", machine))
            kind = ""
            i = end
        elif lines[i].strip():
            kind = ""  # a marker holds only for the block right after it
        i += 1
    return found
