"""Limits that several layers check, each in one place."""

from __future__ import annotations

MAX_ID = 2**63 - 1  # the largest id a database column holds (SQLite, PostgreSQL BIGINT)
MAX_WAIT = 60.0  # seconds one request may wait for a task to end (``?wait=``, ``get(wait)``)
MAX_PAGE = 500  # tasks in one page of the task list
