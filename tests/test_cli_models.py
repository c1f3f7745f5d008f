"""``orchestra train``, ``models``, ``model`` and ``alias``: on this data folder and with --url."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from orchestra.config import Settings
from orchestra.models.store import zip_digest
from tests.support.helpers import run_cli
from tests.support.paths import ROOT
from tests.support.server import LiveServer

EXAMPLE = str(ROOT / "examples" / "trainable")


def ok(argv: list[str], settings: Settings) -> str:
    """A command that must succeed; its standard output."""
    code, out, err = run_cli(argv, settings)
    assert code == 0, err
    assert "Traceback" not in err
    return out


def _train_promote_and_download(settings: Settings, tmp_path: Path) -> None:
    """The whole cycle through the command line, wherever ``settings`` point."""
    ok(["register", EXAMPLE], settings)
    first = json.loads(ok(["train", "1", "epochs=3", "--wait", "--json"], settings))
    assert (first["status"], first["trained"]) == ("done", 1)
    out = ok(["train", "1", "epochs=9", "--base", "@default", "--promote", "--wait"], settings)
    assert "model version 2 of module 1" in out
    table = ok(["models", "1"], settings)
    assert table.splitlines()[0].split()[:4] == ["VERSION", "CREATED", "ALIASES", "TASK"]
    assert "ACCURACY" in table and "LOSS" in table
    assert table.splitlines()[1].split()[0] == "2" and "default" in table.splitlines()[1]
    shown = json.loads(ok(["model", "1", "2", "--json"], settings))
    assert (shown["base"], shown["args"]["epochs"]) == (1, "9")
    target = tmp_path / "v2.zip"
    ok(["model", "1", "2", "-o", str(target)], settings)
    with zipfile.ZipFile(target) as archive:
        assert zip_digest(archive) == shown["digest"]
    moved = json.loads(ok(["alias", "1", "default", "1", "--json"], settings))
    assert moved["aliases"] == {"default": 1}
    assert [(h["from"], h["to"]) for h in moved["history"]] == [(None, 1), (1, 2), (2, 1)]
    ok(["alias", "1", "old", "2"], settings)
    assert "old" not in ok(["alias", "1", "old", "--remove"], settings).split("history")[0]
    code, _, err = run_cli(["alias", "1", "Bad!", "2"], settings)
    assert code == 2 and "alias 'Bad!'" in err
    code, _, err = run_cli(["alias", "1", "default"], settings)
    assert code == 2 and "--remove" in err
    code, _, err = run_cli(["model", "1", "7"], settings)
    assert code == 3 and "no model version 7" in err


def test_the_cycle_on_this_data_folder(settings: Settings, tmp_path: Path) -> None:
    _train_promote_and_download(settings, tmp_path)


def test_the_cycle_through_a_server(
    tmp_path: Path, live_server: LiveServer, settings: Settings
) -> None:
    remote = Settings(home=tmp_path / "laptop", url=live_server.url, api_token="")
    _train_promote_and_download(remote, tmp_path)
    assert [v.version for v in live_server.service.list_models(1)] == [2, 1]
