"""The per-task supervisor run as the server runs it: a real process on a real task folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestra.executors.local import SUPERVISOR
from tests.support.processes import TREE, alive, wait_for_file


def _spec(task_dir: Path, code: str, *args: str, **extra: Any) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-c", code, *args],
        "cwd": str(task_dir),
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "timeout": 60,
        "grace": 1.0,
        **extra,
    }
    (task_dir / "spec.json").write_text(json.dumps(spec))


def _start(task_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(SUPERVISOR), str(task_dir)], start_new_session=True
    )


def _result(task_dir: Path) -> dict[str, Any]:
    return dict(json.loads((task_dir / "result.json").read_text().splitlines()[-1]))


def _identity(task_dir: Path) -> dict[str, Any]:
    """The supervisor's first line, in supervisor.json while it runs, then in result.json."""
    for name in ("supervisor.json", "result.json"):
        if (task_dir / name).exists():
            return dict(json.loads((task_dir / name).read_text().splitlines()[0]))
    raise AssertionError("the supervisor left no record")


def test_a_module_that_succeeds_is_recorded_as_exited_with_status_zero(tmp_path: Path) -> None:
    _spec(tmp_path, "print('hello')")
    assert _start(tmp_path).wait(timeout=30) == 0
    result = _result(tmp_path)
    assert (result["reason"], result["exit_code"], result["signal"]) == ("exited", 0, None)
    assert (tmp_path / "stdout.log").read_text() == "hello\n"
    assert not (tmp_path / "supervisor.json").exists()  # renamed into result.json
    recorded = _identity(tmp_path)
    assert recorded["module_pid"] != recorded["pid"]


def test_a_failing_module_leaves_its_status_and_its_standard_error(tmp_path: Path) -> None:
    _spec(tmp_path, "import sys; sys.stderr.write('broken input\\n'); sys.exit(4)")
    _start(tmp_path).wait(timeout=30)
    assert _result(tmp_path)["exit_code"] == 4
    assert (tmp_path / "stderr.log").read_text() == "broken input\n"


def test_a_module_that_cannot_start_is_recorded_with_the_reason(tmp_path: Path) -> None:
    _spec(tmp_path, "pass")
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["argv"] = [str(tmp_path / "no-such-python")]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _start(tmp_path).wait(timeout=30)
    result = _result(tmp_path)
    assert result["reason"] == "start_failed"
    assert "no-such-python" in result["error"]


def test_a_module_killed_by_a_signal_reports_the_signal(tmp_path: Path) -> None:
    _spec(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    _start(tmp_path).wait(timeout=30)
    result = _result(tmp_path)
    assert (result["exit_code"], result["signal"]) == (None, signal.SIGSEGV)


def test_sigterm_to_the_supervisor_kills_the_whole_tree_within_the_grace_period(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids.json"
    _spec(tmp_path, TREE, str(pid_file), "ignore-term")
    supervisor = _start(tmp_path)
    wait_for_file(pid_file)
    pids = json.loads(pid_file.read_text())
    assert len(alive(pids)) == 3
    began = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(timeout=30)
    assert time.monotonic() - began < 1.0 + 2.0  # grace + margin
    assert _result(tmp_path)["reason"] == "killed"
    assert alive(pids) == []


def test_the_timeout_kills_the_tree_and_is_recorded_as_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"
    _spec(tmp_path, TREE, str(pid_file), timeout=1.0, grace=0.5)
    _start(tmp_path).wait(timeout=30)
    result = _result(tmp_path)
    assert result["reason"] == "timeout"
    assert result["signal"] == signal.SIGTERM
    assert alive(json.loads(pid_file.read_text())) == []


def test_processes_left_behind_by_a_module_that_ended_are_stopped(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys;"
        "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); "
        "time.sleep(600)']);"
        "open(sys.argv[1], 'w').write(str(p.pid))"
    )
    pid_file = tmp_path / "leftover.pid"
    _spec(tmp_path, code, str(pid_file))
    _start(tmp_path).wait(timeout=30)
    assert _result(tmp_path)["exit_code"] == 0
    assert alive([int(pid_file.read_text())]) == []


def test_the_module_starts_as_a_fresh_process_would(tmp_path: Path) -> None:
    # its own session, the spec's folder, no input, only the spec's environment, and the
    # default action for the signals that Python ignores (a shell pipeline needs SIGPIPE)
    code = (
        "import json, os;"
        "print(json.dumps({'sid': os.getsid(0), 'pid': os.getpid(), 'cwd': os.getcwd(),"
        " 'stdin': os.readlink('/proc/self/fd/0'), 'env': sorted(os.environ)}))"
    )
    work = tmp_path / "work"
    work.mkdir()
    _spec(tmp_path, "", cwd=str(work), env={"PATH": "/usr/bin:/bin", "ONLY": "1", "CODE": code})
    spec = json.loads((tmp_path / "spec.json").read_text())
    # the shell reports what it was started with, then becomes Python (same process)
    shell = f'grep "^SigIgn" /proc/$$/status; exec {sys.executable} -S -c "$CODE"'
    spec["argv"] = ["/bin/sh", "-c", shell]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _start(tmp_path).wait(timeout=30)
    assert _result(tmp_path)["exit_code"] == 0, (tmp_path / "stderr.log").read_text()
    ignored_line, report = (tmp_path / "stdout.log").read_text().splitlines()
    ignored = int(ignored_line.split(":")[1], 16)
    sigpipe, sigxfsz = 1 << (signal.SIGPIPE - 1), 1 << (signal.SIGXFSZ - 1)
    assert ignored & (sigpipe | sigxfsz) == 0
    seen = json.loads(report)
    assert seen["sid"] == seen["pid"]
    assert seen["cwd"] == str(work)
    assert seen["stdin"] == os.devnull
    assert [k for k in seen["env"] if k not in ("PWD", "SHLVL", "_", "LC_CTYPE")] == [
        "CODE",
        "ONLY",
        "PATH",
    ]
