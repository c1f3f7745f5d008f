"""Where the tests find the project, its examples and their own data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests" / "data"
