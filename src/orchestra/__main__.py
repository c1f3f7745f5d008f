"""`python -m orchestra`."""

import sys

from orchestra.cli import main

sys.exit(main(sys.argv[1:]))
