"""`python -m orchestra`."""

from orchestra.cli import entry

entry()
