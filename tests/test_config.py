from __future__ import annotations

from pathlib import Path

import pytest

from orchestra.config import load_settings
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
    with pytest.raises(InvalidInput, match="setting index_url: .* is not an http"):
        load_settings(environ=env)
    good = "https://index.example/simple"
    assert load_settings(environ={**env, "ORCHESTRA_INDEX_URL": good}).index_url == good


def test_booleans_accept_the_usual_spellings(tmp_path: Path) -> None:
    env = {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_INSECURE": "yes"}
    assert load_settings(environ=env).insecure is True
    with pytest.raises(InvalidInput, match="insecure"):
        load_settings(environ={**env, "ORCHESTRA_INSECURE": "maybe"})
