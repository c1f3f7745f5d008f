#!/usr/bin/env bash
# How home/ was made: a data folder written by the first release (commit 66ddf53, schema 1,
# no Alembic) through its own command line. Run from the repository root:
#     bash tests/data/release-1/make.sh
# It needs the project's .venv (the release's dependencies are a subset of today's).
# What it leaves: one module (from tests/data/release-1/module) and four tasks: done with an
# output file, error (exit status 3), killed, and one still queued (ORCHESTRA_MAX_RUNNING=0).
# The module's environment and the installer cache are not kept (machine-specific); the test
# rebuilds the environment. The data folder is made at /tmp/orchestra-release-1/home, the path
# that its rows name.
set -euo pipefail
root="$(pwd)"
here="$root/tests/data/release-1"
release="$(mktemp -d)"
git archive 66ddf53 src | tar -x -C "$release"
work=/tmp/orchestra-release-1
rm -rf "$work" && mkdir -p "$work"
export ORCHESTRA_HOME="$work/home" PYTHONPATH="$release/src" ORCHESTRA_KILL_GRACE=1
orchestra() { "$root/.venv/bin/python" -m orchestra "$@"; }
orchestra register "$here/module"
orchestra run 1 start=2024-01-01 stop=2024-01-02 --wait
orchestra run 1 code=3 --wait || true
task=$(orchestra --json run 1 seconds=60 | "$root/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["task"])' 2>/dev/null || echo 3)
sleep 1 && orchestra kill "$task"
ORCHESTRA_MAX_RUNNING=0 orchestra run 1 start=2024-02-01
# one file without WAL beside it, as a copy would see it
"$root/.venv/bin/python" - "$work/home/orchestra.db" <<'PY'
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
connection.execute("PRAGMA journal_mode=DELETE")
connection.close()
PY
rm -rf "$here/home" && mkdir -p "$here/home"
cp -a "$work/home/orchestra.db" "$work/home/tasks" "$work/home/installs" "$here/home/"
rm -rf "$here"/home/installs/*/env "$release"
find "$here/home" \( -name __pycache__ -o -name compile.pid \) -prune -exec rm -rf {} +
