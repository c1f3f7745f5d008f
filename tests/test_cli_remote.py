"""The command line driving a real server over HTTP (``--url``): same answers as locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.config import Settings
from tests.support.gitserver import GitDaemon, git, make_repo
from tests.support.helpers import free_port, run_cli, wait_for, write_module
from tests.support.paths import DATA, EXAMPLES, ROOT

if TYPE_CHECKING:
    from tests.support.server import LiveServer

TOKEN = "remote-test-token"
CATALOG = str(EXAMPLES / "catalog")
OUTPUTS = str(DATA / "modules" / "outputs")


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The server's settings: changes need the token (a test may add settings as its param)."""
    return settings.with_overrides(api_token=TOKEN, **getattr(request, "param", {}))


@pytest.fixture
def remote(tmp_path: Path, live_server: LiveServer) -> Settings:
    """The command line's settings: the server's URL and token, an empty data folder of its own."""
    return Settings(home=tmp_path / "laptop", url=live_server.url, api_token=TOKEN)


def remote_as(remote: Settings, token: str) -> Settings:
    """The same command line with another token."""
    return Settings(home=remote.home, url=remote.url, api_token=token)


def ok(argv: list[str], settings: Settings) -> str:
    """Run a command that must succeed; its standard output."""
    code, out, err = run_cli(argv, settings)
    assert code == 0, err
    assert "Traceback" not in err
    return out


def test_module_commands_go_through_the_api_and_answer_as_locally(
    remote: Settings, live_server: LiveServer, settings: Settings
) -> None:
    code, out, err = run_cli(["--register", CATALOG], remote)
    assert code == 0, err
    assert out == f"registered module 1 into {remote.url}: Example catalog (installed)\n"
    assert "uploading" in err and "installing on the server" in err  # progress
    assert [m.name for m in live_server.service.list_modules()] == ["Example catalog"]
    assert not (remote.home / "orchestra.db").exists()  # nothing of it on this side
    for argv in (["--json", "list"], ["--json", "show", "1"], ["list"], ["show", "1"]):
        assert ok(argv, remote) == ok(argv, settings), argv
    ok(["register", OUTPUTS], remote)
    assert "removed module 1" in ok(["--remove", "1"], remote)
    assert [m.id for m in live_server.service.list_modules()] == [2]
    assert json.loads(ok(["clear", "--yes", "--json"], remote)) == {"removed_modules": 1}
    assert live_server.service.list_modules() == []


def test_register_json_and_skip_existing(remote: Settings, settings: Settings) -> None:
    first = json.loads(ok(["register", "--json", CATALOG], remote))
    assert first["skipped"] == [] and first["registered"][0]["status"] == "installed"
    assert first["registered"][0] == json.loads(ok(["--json", "show", "1"], settings))
    again = json.loads(ok(["register", "--json", "--skip-existing", CATALOG], remote))
    assert again == {"registered": [], "skipped": [{"source": CATALOG, "name": "Example catalog"}]}


def test_a_git_url_is_cloned_by_the_server(
    remote: Settings, live_server: LiveServer, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "src", name="From git", code="(out / 'x.txt').write_text('x')")
    files = {str(p.relative_to(module)): p.read_bytes() for p in module.rglob("*") if p.is_file()}
    repo = git_daemon.new_repo(files)
    code, out, err = run_cli(["register", git_daemon.url(repo.name)], remote)
    assert code == 0, err
    info = live_server.service.get_module(1)
    assert (info.name, info.source_kind, info.source) == (
        "From git",
        "git",
        git_daemon.url(repo.name),
    )


def test_task_commands_go_through_the_api_and_answer_as_locally(
    remote: Settings, settings: Settings, tmp_path: Path
) -> None:
    ok(["register", CATALOG], remote)
    code, out, err = run_cli(["run", "1", "parameter=bx", "--wait"], remote)
    assert code == 0, err
    assert "status:    done" in out and "catalog.txt" in out
    assert "found 4 events of bx" in err  # the log, followed on standard error
    for argv in (["--json", "tasks"], ["--json", "task", "1"], ["--json", "log", "1"], ["tasks"]):
        assert ok(argv, remote) == ok(argv, settings), argv
    target = tmp_path / "downloaded.txt"
    saved = json.loads(ok(["output", "1", "-o", str(target), "--json"], remote))
    server_file = settings.tasks_dir / "1" / "output" / "catalog.txt"
    assert target.read_bytes() == server_file.read_bytes()
    assert saved == {
        "path": str(target),
        "size": server_file.stat().st_size,
        "files": ["catalog.txt"],
    }
    queued = json.loads(ok(["--json", "run", "1", "parameter=by"], remote))
    assert queued["id"] == 2 and queued["args"]["parameter"] == "by"


def test_several_outputs_arrive_as_the_same_zip_as_locally(
    remote: Settings, settings: Settings, tmp_path: Path
) -> None:
    ok(["register", OUTPUTS], remote)
    assert run_cli(["run", "1", "--wait"], remote)[0] == 0
    ok(["output", "1", "-o", str(tmp_path / "remote.zip")], remote)
    ok(["output", "1", "-o", str(tmp_path / "local.zip")], settings)
    with (
        zipfile.ZipFile(tmp_path / "remote.zip") as far,
        zipfile.ZipFile(tmp_path / "local.zip") as near,
    ):
        assert far.namelist() == near.namelist() == ["a.csv", "b.txt"]
        assert [far.read(n) for n in far.namelist()] == [near.read(n) for n in near.namelist()]


def test_kill_stops_a_running_task_through_the_api(
    remote: Settings, settings: Settings, tmp_path: Path
) -> None:
    module = write_module(
        tmp_path / "sleeper", name="Sleeper", code="print('up', flush=True)\ntime.sleep(60)"
    )
    ok(["register", str(module)], remote)
    ok(["run", "1"], remote)
    wait_for(
        lambda: json.loads(ok(["--json", "log", "1"], remote))["stdout"],
        lambda text: "up" in text, timeout=60, what="task started",
    )  # fmt: skip
    for argv in (["output", "1"], ["remove", "1"]):  # a running task: the same refusals
        code, out, err = run_cli(argv, remote)
        assert code == 4 and (code, _error_lines(err)) == _code_and_error(argv, settings)
    killed = json.loads(ok(["--json", "kill", "1"], remote))
    assert killed["status"] == "killed"
    code, out, err = run_cli(["kill", "1"], remote)
    assert code == 4 and (code, _error_lines(err)) == _code_and_error(["kill", "1"], settings)


def _code_and_error(argv: list[str], settings: Settings) -> tuple[int, list[str]]:
    code, _, err = run_cli(argv, settings)
    return code, _error_lines(err)


@pytest.mark.parametrize(
    "argv",
    [["show", "99"], ["task", "99"], ["log", "99"], ["kill", "99"], ["output", "99"],
     ["run", "99"], ["remove", "99"], ["run", "1", "nope=1"], ["run", "1", "spacing_hours=x"],
     ["register", "/no/such/folder"], ["tasks", "--cursor", "garbage"]],
)  # fmt: skip
def test_errors_are_the_same_lines_and_codes_as_locally(
    remote: Settings, settings: Settings, argv: list[str]
) -> None:
    ok(["register", CATALOG], remote)
    code, out, err = run_cli(argv, remote)
    local_code, local_out, local_err = run_cli(argv, settings)
    # progress notes differ (uploading, fetching); the error line and the code do not
    assert (code, out, _error_lines(err)) == (local_code, local_out, _error_lines(local_err))
    assert code != 0 and len(_error_lines(err)) == 1 and "Traceback" not in err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("orchestra: error: ")]


def test_a_wrong_or_missing_token_is_refused_and_changes_nothing(
    remote: Settings, live_server: LiveServer
) -> None:
    for token in ("wrong", ""):
        code, out, err = run_cli(["register", CATALOG], remote_as(remote, token))
        assert code == 2 and out == ""
        assert "Authorization: Bearer" in err and "ORCHESTRA_API_TOKEN" in err
        assert "Traceback" not in err and len(_error_lines(err)) == 1
    assert live_server.service.list_modules() == []
    ok(["register", CATALOG], remote)
    assert run_cli(["remove", "1"], remote_as(remote, "wrong"))[0] == 2
    assert "Example catalog" in ok(["list"], remote_as(remote, ""))  # reads need no token here
    assert len(live_server.service.list_modules()) == 1


def test_a_failed_installation_reads_as_locally_and_leaves_nothing(
    remote: Settings, settings: Settings, live_server: LiveServer, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "old", name="Needs old Python", code="pass")
    metadata = json.loads((module / "metadata.json").read_text())
    metadata["install"]["python_version"] = "2.1"
    (module / "metadata.json").write_text(json.dumps(metadata))
    code, out, err = run_cli(["register", str(module)], remote)
    local_code, _, local_err = run_cli(["register", str(module)], settings)
    assert code == local_code != 0
    assert err.splitlines()[-1] == local_err.splitlines()[-1]
    assert live_server.service.list_modules() == []


@pytest.mark.parametrize("settings", [{"max_upload": 100_000}], indirect=True)
def test_an_upload_over_the_limit_is_refused_as_too_large(
    remote: Settings, live_server: LiveServer, tmp_path: Path
) -> None:
    # over the application's limit (a JSON 413), then over the WSGI server's (it closes early)
    for size in (200_000, 1_300_000):
        module = write_module(tmp_path / str(size), name="Big", code="pass")
        (module / "tinymod" / "weights.bin").write_bytes(os.urandom(size))
        code, out, err = run_cli(["register", str(module)], remote)
        assert code == 2 and out == "" and "Traceback" not in err
        assert len(_error_lines(err)) == 1 and ("413" in err or "capacity limit" in err)
    assert live_server.service.list_modules() == []


def test_an_unreachable_server_or_a_bad_url_is_one_clear_line(settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run_cli(["--url", url, "list"], settings)
    assert code == 7
    hint = "connection refused (is `orchestra serve` running there?)"
    assert err == f"orchestra: error: cannot reach {url}: {hint}\n"
    for bad in ("ftp://example.org", "127.0.0.1:8470", "http://", "http://[::1"):
        code, out, err = run_cli(["--url", bad, "list"], settings)
        assert code == 2 and err.startswith("orchestra: error: ") and err.count("\n") == 1
        assert "url" in err and bad in err


def test_the_installed_command_reads_orchestra_url_and_the_token(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = {**os.environ, "ORCHESTRA_URL": live_server.url, "ORCHESTRA_API_TOKEN": TOKEN}
    env["ORCHESTRA_HOME"] = str(tmp_path / "laptop")
    argv = [sys.executable, "-m", "orchestra", "register", "--json", CATALOG]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["registered"][0]["name"] == "Example catalog"
    assert not (tmp_path / "laptop").exists()


def _served_module(git_daemon: GitDaemon, tmp_path: Path, version: str) -> Path:
    """A served git repository holding a tiny module at ``version`` (tagged so)."""
    module = write_module(tmp_path / version, name="Versioned", code="pass")
    metadata = json.loads((module / "metadata.json").read_text())
    (module / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    files = {str(p.relative_to(module)): p.read_bytes() for p in module.rglob("*") if p.is_file()}
    repo = git_daemon.new_repo(files)
    git(repo, "tag", version)
    return repo


def test_update_through_the_api_moves_to_a_ref_or_fails_as_locally(
    remote: Settings, settings: Settings, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    repo = _served_module(git_daemon, tmp_path, "1.0")
    ok(["register", git_daemon.url(repo.name), "--ref", "1.0"], remote)
    make_repo(repo, {"metadata.json": (repo / "metadata.json").read_text().replace("1.0", "2.0")})
    git(repo, "tag", "2.0")
    code, out, err = run_cli(["update", "1", "--ref", "2.0"], remote)
    assert code == 0, err
    assert out == f"updated module 1 in {remote.url}: Versioned (installed)\n"
    assert "updated Versioned" in err
    assert ok(["--json", "show", "1"], remote) == ok(["--json", "show", "1"], settings)
    assert json.loads(ok(["--json", "show", "1"], remote))["version"] == "2.0"
    code, out, err = run_cli(["update", "1", "--ref", "9.9"], remote)
    assert code == 5 and _error_lines(err) == [
        f"orchestra: error: ref '9.9' not found in {git_daemon.url(repo.name)}"
    ]
    assert json.loads(ok(["--json", "show", "1"], remote))["version"] == "2.0"  # still serving


def test_update_from_a_zip_publish_stage_prune_and_purge_through_the_api(
    remote: Settings, settings: Settings, live_server: LiveServer, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "m", name="Zipped", code="(out / 'a.txt').write_text('a')")
    ok(["register", "--staged", str(module)], remote)
    assert "installed (staged)" in ok(["list"], remote)
    assert json.loads(ok(["--json", "publish", "1"], remote))["staged"] is False
    assert ok(["stage", "1"], remote) == f"staged module 1 in {remote.url}: Zipped\n"
    new = tmp_path / "new.zip"
    with zipfile.ZipFile(new, "w") as zipped:
        for path in sorted(p for p in module.rglob("*") if p.is_file()):
            text = path.read_text().replace('"0.1"', '"0.2"')
            zipped.writestr(path.relative_to(module).as_posix(), text)
    updated = ok(["update", "1", "--zip", str(new)], remote)
    assert updated.startswith(f"updated module 1 in {remote.url}: Zipped")
    assert live_server.service.get_module(1).version == "0.2"
    ok(["run", "1", "--wait"], remote)
    pruned = json.loads(ok(["--json", "prune", "--older-than", "1"], remote))
    assert pruned == json.loads(ok(["--json", "prune", "--older-than", "1"], settings))
    ok(["remove", "1", "--purge"], remote)
    assert live_server.service.list_tasks().total == 0
