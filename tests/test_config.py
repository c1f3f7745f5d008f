from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.errors import InvalidInput


def test_environment_overrides_config_file_and_flags_override_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('port = 9000\nkill_grace = 2.5\nhost = "127.0.0.2"\n')
    env = {"ORCHESTRA_HOME": str(home), "ORCHESTRA_PORT": "9100"}
    settings = load_settings({"host": "127.0.0.3"}, environ=env)
    assert settings.port == 9100
    assert settings.kill_grace == 2.5
    assert settings.host == "127.0.0.3"
    assert settings.db_url == f"sqlite:///{home / 'orchestra.db'}"


def test_every_path_derives_from_the_data_folder(tmp_path: Path) -> None:
    settings = load_settings(environ={"ORCHESTRA_HOME": str(tmp_path)})
    for path in (settings.installs_dir, settings.tasks_dir, settings.uv_cache_dir):
        assert tmp_path in path.parents


def test_a_bad_value_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="max_running"):
        load_settings(environ={"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_MAX_RUNNING": "x"})


@pytest.mark.parametrize("url", ["ftp://index.example/simple", "index.example", "https:// x"])
def test_the_index_url_must_be_an_http_or_file_url(tmp_path: Path, url: str) -> None:
    env = {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_INDEX_URL": url}
    with pytest.raises(InvalidInput, match="ORCHESTRA_INDEX_URL=.* index_url must be empty .*http"):
        load_settings(environ=env)
    good = "https://index.example/simple"
    assert load_settings(environ={**env, "ORCHESTRA_INDEX_URL": good}).index_url == good


def test_booleans_accept_the_usual_spellings(tmp_path: Path) -> None:
    env = {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_INSECURE": "yes"}
    assert load_settings(environ=env).insecure is True
    with pytest.raises(InvalidInput, match="insecure"):
        load_settings(environ={**env, "ORCHESTRA_INSECURE": "maybe"})


# one bad value for every setting: in the environment where a string can be wrong there,
# else in a config file (a TOML number where text is expected)
BAD_IN_ENVIRONMENT = {
    "home": "", "database_url": "postgres-on-box-1", "max_running": "0",
    "task_timeout": "0", "task_retention_days": "-1", "kill_grace": "-0.5",
    "protect_reads": "perhaps", "host": "", "port": "70000", "insecure": "2",
    "threads": "0", "max_upload": "0", "max_unpacked": "-1", "max_archive_members": "0",
    "max_arg_length": "0", "git_timeout": "-3", "install_timeout": "nan",
    "allow_requirement_options": "sure", "compile_bytecode": "maybe", "prefer_cached": "y",
    "index_url": "index.example", "poll_interval": "0", "executor": "kubernetes",
    "worker_lease": "-5", "url": "box-1:8470",
    "sandbox": "sometimes", "task_memory_mb": "-1", "task_cpu_seconds": "1.5",
    "task_output_mb": "lots", "task_processes": "-2", "min_free_mb": "-100",
    "broker_url": "amqp://box-1", "api_url": "box-1:8470", "max_queued_per_submitter": "-1",
    "model_keep": "-1",
    "warm": "sometimes", "warm_memory_mb": "-1", "warm_idle_seconds": "-5",
}  # fmt: skip
BAD_IN_FILE = {"api_token": 12345, "uv_cache": ["a", "b"]}


def test_every_setting_has_a_bad_value_here() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    assert names == set(BAD_IN_ENVIRONMENT) | set(BAD_IN_FILE)


@pytest.mark.parametrize("name", sorted(BAD_IN_ENVIRONMENT))
def test_a_bad_value_in_the_environment_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    env = {"ORCHESTRA_HOME": str(tmp_path), f"ORCHESTRA_{name.upper()}": BAD_IN_ENVIRONMENT[name]}
    with pytest.raises(InvalidInput) as caught:
        load_settings(environ=env, system_config=None)
    message = str(caught.value)
    assert message.startswith(f"ORCHESTRA_{name.upper()}={BAD_IN_ENVIRONMENT[name]} is refused")
    assert f"{name} must be " in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(BAD_IN_FILE))
def test_a_bad_value_in_a_config_file_is_refused_naming_it_and_the_file(
    tmp_path: Path, name: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"{name} = {json.dumps(BAD_IN_FILE[name])}\n")
    with pytest.raises(InvalidInput, match=rf"^{name} = .* in {config} is refused: {name} must"):
        load_settings(environ={"ORCHESTRA_HOME": str(tmp_path)}, system_config=None)


def test_the_lease_must_leave_room_for_heartbeats(tmp_path: Path) -> None:
    for value in ("0", "-5", "0.5", "inf"):
        with pytest.raises(InvalidInput, match="worker_lease must be a number of seconds"):
            load_settings(environ={"ORCHESTRA_WORKER_LEASE": value}, system_config=None)
    lease = load_settings(environ={"ORCHESTRA_WORKER_LEASE": "1"}, system_config=None)
    assert lease.worker_lease == 1.0


def test_a_password_in_a_refused_url_and_a_token_are_never_shown(tmp_path: Path) -> None:
    env = {"ORCHESTRA_BROKER_URL": "amqp://u:hunter2@box"}
    with pytest.raises(InvalidInput, match=r"amqp://u:\*\*\*@box") as caught:
        load_settings(environ=env, system_config=None)
    assert "hunter2" not in str(caught.value)
    (tmp_path / "config.toml").write_text("api_token = 424242\n")
    with pytest.raises(InvalidInput) as caught:
        load_settings(environ={"ORCHESTRA_HOME": str(tmp_path)}, system_config=None)
    assert "424242" not in str(caught.value)


def test_config_files_are_read_in_order_the_system_one_last(tmp_path: Path) -> None:
    system = tmp_path / "etc.toml"
    home = tmp_path / "data"
    system.write_text(f'home = "{home}"\nport = 9001\nhost = "10.0.0.1"\nkill_grace = 1\n')
    home.mkdir()
    (home / "config.toml").write_text('port = 9002\nhost = "10.0.0.2"\n')
    named = tmp_path / "named.toml"
    named.write_text("port = 9003\n")
    settings = load_settings(environ={"ORCHESTRA_CONFIG": str(named)}, system_config=system)
    assert (settings.home, settings.port, settings.host, settings.kill_grace) == (
        home, 9003, "10.0.0.2", 1.0,
    )  # fmt: skip
    # the environment's data folder wins over the system file's, whose other keys still count
    other = tmp_path / "other"
    settings = load_settings(environ={"ORCHESTRA_HOME": str(other)}, system_config=system)
    assert (settings.home, settings.port) == (other, 9001)


def test_a_missing_named_config_file_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="ORCHESTRA_CONFIG=.*: no such file"):
        load_settings(environ={"ORCHESTRA_CONFIG": str(tmp_path / "nope.toml")})
    (tmp_path / "config.toml").write_text("worker_leese = 30\n")
    with pytest.raises(InvalidInput, match=r"unknown setting\(s\) worker_leese in .*config.toml"):
        load_settings(environ={"ORCHESTRA_HOME": str(tmp_path)}, system_config=None)


def test_a_config_file_this_user_cannot_read_is_refused_not_skipped() -> None:
    """Skipped, its settings would not apply: a command would use a data folder of its own."""
    with tempfile.TemporaryDirectory() as folder:  # pytest's own is closed to other users
        os.chmod(folder, 0o755)
        system = Path(folder) / "etc.toml"
        system.write_text('home = "/var/lib/orchestra"\n')
        system.chmod(0o600)
        assert _load_as_another_user(system) == 0


def _load_as_another_user(system: Path) -> int:
    """0 when loading the settings as a user who cannot read ``system`` names that problem."""

    def load() -> int:
        try:
            load_settings(environ={}, system_config=system)
        except InvalidInput as exc:
            return 0 if "cannot be read by this user" in str(exc) else 1
        return 2

    if os.geteuid() != 0:
        system.chmod(0)
        return load()
    pid = os.fork()  # root reads every file: the check runs as nobody, in a child
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = load()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_warm_starts_are_on_unless_turned_off_and_keep_ten_minutes(tmp_path: Path) -> None:
    settings = load_settings(environ={"ORCHESTRA_HOME": str(tmp_path)}, system_config=None)
    assert (settings.warm, settings.warm_memory_mb, settings.warm_idle_seconds) == (True, 0, 600)
    env = {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_WARM": "0",
           "ORCHESTRA_WARM_MEMORY_MB": "2048", "ORCHESTRA_WARM_IDLE_SECONDS": "30"}  # fmt: skip
    cold = load_settings(environ=env, system_config=None)
    assert (cold.warm, cold.warm_memory_mb, cold.warm_idle_seconds) == (False, 2048, 30.0)
