"""deploy/systemd: the units check with systemd's own verifier and run what the docs say.

``systemd-analyze verify`` parses the units as systemd would (unknown keys, bad values, a
missing program) without a running systemd; it reports problems on standard error and
still exits 0 for many of them, so any output is a failure here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra.cli.parser import build_parser
from orchestra.executors import sandbox
from tests.support.paths import ROOT
from tests.support.postgres import require_program, require_service

UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/orchestra/bin/orchestra"  # where docs/several-machines.md installs it


def _service(name: str) -> dict[str, str]:
    """The [Service] section of a unit; a key given several times, its values a line each."""
    section, found = "", {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found[key] = f"{found[key]}\n{value}" if key in found else value
    return found


@pytest.fixture
def verifier() -> str:
    """systemd's own checker of unit files."""
    return require_program("systemd-analyze", "systemd-analyze", "systemd is not installed")


def test_the_units_pass_systemd_analyze_verify(verifier: str, tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "orchestra"  # this checkout's, for /opt/orchestra's
    assert program.exists()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED in text, unit.name
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, str(program)))
    done = subprocess.run(
        [verifier, "verify", "./orchestra-api.service", "./orchestra-worker@1.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_a_unit_with_a_mistake_is_caught(verifier: str, tmp_path: Path) -> None:
    """The check above would pass on anything if verify said nothing of mistakes."""
    text = (UNITS / "orchestra-api.service").read_text()
    (tmp_path / "orchestra-api.service").write_text(
        text.replace("Restart=on-failure", "Restart=sometimes")
    )
    done = subprocess.run(
        [verifier, "verify", "./orchestra-api.service"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "sometimes" in done.stderr


@pytest.mark.parametrize(
    ("name", "user", "command"),
    [("orchestra-api.service", "orchestra", "serve"),
     ("orchestra-worker@.service", "orchestra-worker", "worker")],
)  # fmt: skip
def test_each_unit_runs_its_command_unprivileged_and_restarts_on_failure(
    name: str, user: str, command: str
) -> None:
    service = _service(name)
    assert service["User"] == user and service["Group"] == "orchestra"
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()  # a bad setting: no loop
    argv = service["ExecStart"].split()
    assert argv[0] == INSTALLED
    parsed = build_parser().parse_args(argv[1:])
    assert parsed.command == command
    environment = dict(line.split("=", 1) for line in service["Environment"].splitlines())
    home = environment["ORCHESTRA_HOME"]
    assert home == f"/var/lib/{service['StateDirectory']}"  # systemd makes it, owned by User
    install_script = (ROOT / "deploy" / "install-systemd").read_text()
    assert "useradd --system --gid orchestra" in install_script and user in install_script


def test_each_worker_instance_has_its_own_name_and_data_folder() -> None:
    service = _service("orchestra-worker@.service")
    assert "--name %H-%i" in service["ExecStart"]
    assert service["StateDirectory"] == "orchestra-worker/%i"
    assert "ORCHESTRA_HOME=/var/lib/orchestra-worker/%i" in service["Environment"]
    assert service["KillMode"] == "control-group"  # its tasks end with it


def test_the_sandbox_works_for_the_units_unprivileged_users() -> None:
    """The units run as system users with NoNewPrivileges: bubblewrap must still make every
    namespace a task gets (unprivileged user namespaces, no setuid)."""
    bwrap = require_program("bwrap", "bubblewrap", "bubblewrap is not installed")
    if os.geteuid() != 0:
        require_service("another user", "running a command as nobody needs root")
    as_unit = ["runuser", "-u", "nobody", "--", "setpriv", "--no-new-privs"]
    done = subprocess.run(
        [*as_unit, *sandbox.trial_argv(bwrap)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    who = subprocess.run([*as_unit, "id", "-u"], capture_output=True, text=True, check=True)
    assert who.stdout.strip() != "0"
