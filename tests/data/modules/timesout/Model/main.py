"""Outlast the timeout."""

import time

time.sleep(600)
