"""Entry point: ``python -m Model <output_dir> --start ... --stop ... --parameter ...``."""

from __future__ import annotations

import sys

from Model.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
