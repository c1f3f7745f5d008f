"""The command line: both spellings, rendering, --json, errors and exit codes, real installs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from orchestra.cli.parser import normalize, parse
from orchestra.config import Settings
from orchestra.service import Service
from tests.support.helpers import clean_environ, run_cli, write_module
from tests.support.paths import EXAMPLES, ROOT

CATALOG = str(EXAMPLES / "catalog")
SLEEPER = 'print("started", flush=True)\ntime.sleep(60)'


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--register", "p", "--ref", "v1"], ["register", "p", "--ref", "v1"]),
        (["--register", "p", "--subdir", "d"], ["register", "p", "--subdir", "d"]),
        (["--register=p"], ["register", "p"]),
        (["--list"], ["list"]),
        (["--list", "--json"], ["list", "--json"]),
        (["--json", "--list"], ["--json", "list"]),
        (["--home", "/h", "--list"], ["--home", "/h", "list"]),
        (["--remove", "1", "2", "--force"], ["remove", "1", "2", "--force"]),
        (["--clear", "--yes"], ["clear", "--yes"]),
    ],
)  # fmt: skip
def test_the_flag_spelling_parses_to_the_same_command(flags: list[str], words: list[str]) -> None:
    assert normalize(flags) == words
    assert parse(flags) == parse(words)


def test_options_before_and_after_the_command_mean_the_same() -> None:
    assert parse(["--json", "--home", "/h", "list"]) == parse(["list", "--json", "--home", "/h"])
    assert parse(["--json", "list"]).json is True
    assert parse(["list"]).json is False


def test_a_flag_after_a_command_word_is_not_rewritten() -> None:
    assert normalize(["show", "--list"]) == ["show", "--list"]


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["remove"], ["remove", "abc"], ["show", "-1"], ["show", "9" * 30], ["run"],
     ["tasks", "--status", "finished"], ["tasks", "--limit", "0"], ["--register"]],
)  # fmt: skip
def test_usage_errors_exit_2_with_the_usage(settings: Settings, argv: list[str]) -> None:
    code, out, err = run_cli(argv, settings)
    assert code == 2
    assert "usage: orchestra" in err
    assert "Traceback" not in err


def test_help_and_version_exit_0(settings: Settings) -> None:
    code, out, _ = run_cli(["--help"], settings)
    assert code == 0 and "register" in out and "serve" in out
    code, out, _ = run_cli(["--version"], settings)
    assert code == 0 and out.startswith("orchestra ")


def test_the_command_line_starts_a_registration_before_the_database_layer_is_imported() -> None:
    # a registration builds while SQLAlchemy loads and the database opens in a thread
    # (about a third of a second): importing the command line and the service must not
    # pull the database layer in first
    probe = (
        "import sys, orchestra.cli.commands, orchestra.service; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'alembic', 'flask', 'celery', 'psycopg'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=clean_environ(), check=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout


def test_register_list_show_and_remove_in_the_flag_spelling(settings: Settings) -> None:
    code, out, err = run_cli(["--register", CATALOG], settings)
    assert code == 0, err
    where = f"{settings.home} (SQLite)"  # every change names the data folder it went to
    assert out == f"registered module 1 into {where}: Example catalog (installed)\n"
    assert "orchestra: fetching" in err  # progress of the long steps
    code, out, _ = run_cli(["--list"], settings)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "VERSION", "STATUS", "OUTPUT", "DESCRIPTION"]
    assert row.startswith("1   Example catalog  1.0.0    installed  catalog")
    code, out, _ = run_cli(["--remove", "1"], settings)
    assert (code, out) == (0, f"removed module 1 from {where}\n")
    assert run_cli(["--list"], settings)[1] == "no modules\n"


def test_register_list_show_and_remove_in_the_command_spelling(settings: Settings) -> None:
    code, out, err = run_cli(["register", CATALOG, "--json"], settings)
    assert code == 0, err
    registered = json.loads(out)
    assert registered["skipped"] == []
    module = registered["registered"][0]
    assert module["name"] == "Example catalog" and module["status"] == "installed"
    listing = json.loads(run_cli(["list", "--json"], settings)[1])
    assert listing == [{k: module[k] for k in listing[0]}]
    code, out, _ = run_cli(["show", str(module["id"])], settings)
    assert code == 0
    assert "name:" in out and "Example catalog" in out
    assert "arguments:" in out and "parameter (str)" in out
    assert json.loads(run_cli(["show", "1", "--json"], settings)[1])["install"]["files"] == [
        "Model"
    ]
    assert run_cli(["remove", "1", "--json"], settings)[1] == '{\n  "removed": [\n    1\n  ]\n}\n'


def test_register_skip_existing_skips_installed_names_with_a_note(
    settings: Settings, tmp_path: Path
) -> None:
    other = write_module(tmp_path / "other", name="other", code="pass")
    assert run_cli(["register", CATALOG], settings)[0] == 0
    code, out, err = run_cli(
        ["register", "--skip-existing", CATALOG, str(other), "--json"], settings
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["skipped"] == [{"source": CATALOG, "name": "Example catalog"}]
    assert [m["name"] for m in result["registered"]] == ["other"]
    assert f"skipping {CATALOG}: module 'Example catalog' is already installed" in err
    assert len(json.loads(run_cli(["list", "--json"], settings)[1])) == 2


def test_a_user_error_is_one_line_with_its_exit_code_and_no_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    code, out, err = run_cli(["show", "99"], settings)
    assert (code, out, err) == (3, "", "orchestra: error: no module 99\n")
    code, _, err = run_cli(["register", str(tmp_path / "nowhere")], settings)
    assert code == 5
    assert err.splitlines()[-1].startswith("orchestra: error: source folder not found")
    assert "Traceback" not in err
    assert run_cli(["list", "--json"], settings)[1] == "[]\n"


def test_remove_checks_every_id_before_removing_any(settings: Settings) -> None:
    run_cli(["register", CATALOG], settings)
    code, _, err = run_cli(["remove", "1", "42"], settings)
    assert code == 3 and "no module 42" in err
    assert len(json.loads(run_cli(["list", "--json"], settings)[1])) == 1


def test_clear_without_a_terminal_refuses_unless_yes(settings: Settings) -> None:
    run_cli(["register", CATALOG], settings)
    code, _, err = run_cli(["--clear"], settings)
    assert code == 2
    assert "pass --yes" in err
    assert len(json.loads(run_cli(["list", "--json"], settings)[1])) == 1
    code, out, _ = run_cli(["clear", "--yes"], settings)
    assert (code, out) == (0, f"removed 1 module(s) and every task from {settings.home} (SQLite)\n")
    assert run_cli(["list", "--json"], settings)[1] == "[]\n"


def test_run_wait_follows_the_log_and_prints_the_final_task(settings: Settings) -> None:
    run_cli(["register", CATALOG], settings)
    code, out, err = run_cli(["run", "1", "parameter=Bx", "spacing_hours=12", "--wait"], settings)
    assert code == 0, err
    assert "status:    done" in out
    assert "parameter=Bx" in out
    assert "catalog.txt" in out
    assert f"orchestra: task 1 in {settings.home} (SQLite): " in err


def test_run_wait_exits_non_zero_when_the_task_fails(settings: Settings, tmp_path: Path) -> None:
    folder = write_module(
        tmp_path / "bad", name="bad", code="print('oops', file=sys.stderr)\nsys.exit(3)"
    )
    run_cli(["register", str(folder)], settings)
    code, out, err = run_cli(["run", "1", "--wait", "--json"], settings)
    assert code == 1
    task = json.loads(out)
    assert task["status"] == "error" and task["exit_code"] == 3
    assert "oops" in err  # the log was shown as it grew


def test_run_arguments_must_be_name_value_pairs(settings: Settings) -> None:
    run_cli(["register", CATALOG], settings)
    code, _, err = run_cli(["run", "1", "parameter"], settings)
    assert code == 2 and "expected NAME=VALUE" in err
    code, _, err = run_cli(["run", "1", "a=1", "a=2"], settings)
    assert code == 2 and "more than once" in err
    code, _, err = run_cli(["run", "1", "colour=red"], settings)
    assert code == 2 and "colour" in err


def test_tasks_task_log_and_output(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli(["register", CATALOG], settings)
    assert run_cli(["run", "1", "--wait"], settings)[0] == 0
    code, out, _ = run_cli(["tasks"], settings)
    assert code == 0 and out.splitlines()[1].split()[:3] == ["1", "1", "done"]
    page = json.loads(
        run_cli(["tasks", "--json", "--status", "done", "--module", "1"], settings)[1]
    )
    assert page["total"] == 1 and page["tasks"][0]["id"] == 1
    assert json.loads(run_cli(["task", "1", "--json"], settings)[1])["status"] == "done"
    assert run_cli(["log", "1", "--json"], settings)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["output", "1"], settings)
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'catalog.txt'} (")
    assert (tmp_path / "catalog.txt").read_text().startswith("# Catalog generated by Orchestra;")
    code, _, err = run_cli(["output", "1"], settings)
    assert code == 4 and "already exists" in err
    code, _, _ = run_cli(["output", "1", "-o", str(tmp_path / "x" / "copy.txt")], settings)
    assert code == 0
    assert (tmp_path / "x" / "copy.txt").read_bytes() == (tmp_path / "catalog.txt").read_bytes()


def test_a_saved_output_gets_the_umasks_mode_or_keeps_the_one_it_had(
    settings: Settings, tmp_path: Path
) -> None:
    run_cli(["register", CATALOG], settings)
    assert run_cli(["run", "1", "--wait"], settings)[0] == 0
    old = os.umask(0o027)
    try:
        assert run_cli(["output", "1", "-o", str(tmp_path / "a.txt")], settings)[0] == 0
        os.umask(0o002)
        assert run_cli(["output", "1", "-o", str(tmp_path / "b.txt")], settings)[0] == 0
        (tmp_path / "b.txt").chmod(0o600)
        assert run_cli(["output", "1", "-o", str(tmp_path / "b.txt")], settings)[0] == 0
        assert run_cli(["output", "1", "-o", str(tmp_path / "c.txt")], settings)[0] == 0
    finally:
        os.umask(old)
    modes = [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.txt", "b.txt", "c.txt")]
    assert modes == [0o640, 0o600, 0o664]


def test_output_of_several_files_is_a_zip(settings: Settings, tmp_path: Path) -> None:
    code = "(out / 'a.txt').write_text('a')\n(out / 'b.txt').write_text('b')"
    run_cli(["register", str(write_module(tmp_path / "two", name="two", code=code))], settings)
    assert run_cli(["run", "1", "--wait"], settings)[0] == 0
    target = tmp_path / "out.zip"
    assert run_cli(["output", "1", "-o", str(target)], settings)[0] == 0
    with zipfile.ZipFile(target) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {"a.txt": b"a", "b.txt": b"b"}


def test_kill_stops_a_running_task(settings: Settings, tmp_path: Path) -> None:
    run_cli(["register", str(write_module(tmp_path / "s", name="sleeper", code=SLEEPER))], settings)
    code, out, _ = run_cli(["run", "1", "--json"], settings)
    assert code == 0 and json.loads(out)["status"] in {"queued", "running"}
    code, out, err = run_cli(["kill", "1"], settings)
    assert (code, out) == (0, f"task 1 in {settings.home} (SQLite): killed\n"), err
    code, _, err = run_cli(["kill", "1"], settings)
    assert code == 4 and "already ended" in err


def test_kill_takes_several_ids_and_checks_them_all_first(
    settings: Settings, tmp_path: Path
) -> None:
    run_cli(["register", str(write_module(tmp_path / "s", name="sleeper", code=SLEEPER))], settings)
    for _ in range(2):
        assert run_cli(["run", "1"], settings)[0] == 0
    code, _, err = run_cli(["kill", "1", "2", "99"], settings)
    assert code == 3 and "no task 99" in err
    assert json.loads(run_cli(["task", "2", "--json"], settings)[1])["status"] != "killed"
    code, out, err = run_cli(["kill", "1", "2"], settings)
    where = f"{settings.home} (SQLite)"
    assert (code, out) == (0, f"task 1 in {where}: killed\ntask 2 in {where}: killed\n"), err
    assert run_cli(["task", "2", "--json"], settings)[1].count('"killed"') == 1


def test_a_task_and_run_wait_show_the_worker_that_ran_it(settings: Settings) -> None:
    run_cli(["register", CATALOG], settings)
    code, out, _ = run_cli(["run", "1", "--wait"], settings)
    worker = json.loads(run_cli(["task", "1", "--json"], settings)[1])["worker"]
    assert code == 0 and worker and f"worker:    {worker}\n" in out
    assert f"worker:    {worker}\n" in run_cli(["task", "1"], settings)[1]


def test_worker_and_serve_do_not_offer_a_url_they_would_ignore(settings: Settings) -> None:
    for command in ("worker", "serve"):
        assert "--url" not in subprocess.run(
            [sys.executable, "-m", "orchestra", command, "--help"], capture_output=True,
            text=True, env={**clean_environ(), "PYTHONPATH": str(ROOT / "src")}, check=True,
        ).stdout  # fmt: skip
        code, _, err = run_cli(["--url", "http://127.0.0.1:9", command], settings)
        assert code == 2 and err.count("\n") == 1 and f"`{command}` runs on this machine" in err
    code, _, err = run_cli(["worker", "--url", "http://127.0.0.1:9"], settings)
    assert code == 2 and "unrecognized arguments: --url" in err
    assert "ORCHESTRA_API_URL" in run_cli(["--url", "http://127.0.0.1:9", "worker"], settings)[2]


def test_ctrl_c_while_following_exits_130_with_one_line(settings: Settings, tmp_path: Path) -> None:
    run_cli(["register", str(write_module(tmp_path / "s", name="sleeper", code=SLEEPER))], settings)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, _, err = run_cli(["run", "1", "--wait"], settings)
    finally:
        timer.cancel()
    assert code == 130
    assert err.splitlines()[-1] == "orchestra: interrupted"
    service = Service(settings)
    try:
        assert service.kill(1).status == "killed"  # the task itself went on
    finally:
        service.close()


def test_python_dash_m_orchestra_runs_the_flag_spelling(tmp_path: Path, uv_cache: Path) -> None:
    env = clean_environ()
    env.update(ORCHESTRA_UV_CACHE=str(uv_cache), PYTHONPATH=str(ROOT / "src"))
    home = str(tmp_path / "home")
    command = [sys.executable, "-m", "orchestra", "--home", home]

    def orchestra(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *argv], env=env, capture_output=True, text=True, timeout=300
        )

    done = orchestra("--register", CATALOG)
    assert done.returncode == 0, done.stderr
    # the process ends without the interpreter's teardown: what it printed must all be there
    where = f"{home} (SQLite)"
    assert done.stdout == f"registered module 1 into {where}: Example catalog (installed)\n"
    assert done.stderr.endswith("orchestra: installed Example catalog as module 1\n")
    listed = orchestra("--list", "--json")
    assert [m["name"] for m in json.loads(listed.stdout)] == ["Example catalog"]
    missing = orchestra("show", "7")
    assert (missing.returncode, missing.stderr) == (3, "orchestra: error: no module 7\n")
    assert orchestra("no-such-command").returncode == 2


def test_update_reinstalls_a_module_from_its_source(settings: Settings, tmp_path: Path) -> None:
    folder = write_module(tmp_path / "m", name="grows", code="pass")
    run_cli(["register", str(folder)], settings)
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "version": "0.2"}))
    code, out, err = run_cli(["update", "1"], settings)
    assert code == 0, err
    assert out == f"updated module 1 in {settings.home} (SQLite): grows (installed)\n"
    assert json.loads(run_cli(["show", "1", "--json"], settings)[1])["version"] == "0.2"


@pytest.mark.parametrize(("answer", "kept"), [("y\n", 0), ("n\n", 1), ("\n", 1)])
def test_clear_on_a_terminal_asks_first(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, answer: str, kept: int
) -> None:
    import pty

    run_cli(["register", CATALOG], settings)
    controller, terminal = pty.openpty()
    with os.fdopen(terminal, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        os.write(controller, answer.encode())
        code, _, err = run_cli(["clear"], settings)
    os.close(controller)
    assert "remove all 1 module(s) and every task? [y/N]" in err
    assert code == (0 if answer == "y\n" else 1)
    assert len(json.loads(run_cli(["list", "--json"], settings)[1])) == kept
