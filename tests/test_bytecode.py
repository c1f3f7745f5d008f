"""The background bytecode compile ends with its owner: a removed module, data folder, server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestra import compiles
from orchestra.config import Settings
from orchestra.service import Service
from orchestra.storage.files import InstallFolder
from tests.support.helpers import wait_for, write_module

# enough code that compiling it takes a while on any machine, so removals land mid-way
FILES = 1500
BODY = "".join(f"def f{i}(x):\n    return [x * {i} for _ in range(3)]\n" for i in range(60))


def _big_module(folder: Path) -> Path:
    write_module(folder, name=f"big {folder.name}", code="pass")
    for index in range(FILES):
        (folder / "tinymod" / f"part{index}.py").write_text(BODY)
    return folder


def _registered(service: Service, folder: Path) -> tuple[InstallFolder, int]:
    module = service.register(str(_big_module(folder)))
    _manifest, install = service.registry.runnable(module.id)
    assert compiles.bytecode_pending(install.root), "compiled before the test could act"
    return install, module.id


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int) -> None:
    wait_for(lambda: _gone(pid), bool, timeout=60, what=f"compile process {pid} ends")


@pytest.fixture
def compiling(settings: Settings) -> Settings:
    return settings.with_overrides(compile_bytecode=True)


def test_removing_the_module_mid_compile_stops_it_and_leaves_no_files(
    compiling: Settings, tmp_path: Path
) -> None:
    service = Service(compiling)
    try:
        install, module_id = _registered(service, tmp_path / "m")
        pid = int((install.root / compiles.COMPILE_PID_FILE).read_text())
        service.remove(module_id)
        _wait_gone(pid)
    finally:
        service.close()
    assert not install.root.exists()
    assert list(compiling.installs_dir.iterdir()) == []


def test_removing_the_whole_data_folder_mid_compile_leaves_nothing_behind(
    compiling: Settings, tmp_path: Path
) -> None:
    service = Service(compiling)
    try:
        install, _module_id = _registered(service, tmp_path / "m")
        pid = int((install.root / compiles.COMPILE_PID_FILE).read_text())
        # as an operator's `rm -rf` would, while the compile keeps making __pycache__ folders
        wait_for(
            lambda: shutil.rmtree(compiling.home, ignore_errors=True),
            lambda _: not compiling.home.exists(),
            timeout=60,
            what="the data folder is removed",
        )
        _wait_gone(pid)
    finally:
        service.close()
    assert not compiling.home.exists(), sorted(str(p) for p in compiling.home.rglob("*"))[:5]


def test_a_server_that_stops_stops_its_own_compilation(compiling: Settings, tmp_path: Path) -> None:
    service = Service(compiling)
    service.start()
    try:
        install, _module_id = _registered(service, tmp_path / "m")
        pid = int((install.root / compiles.COMPILE_PID_FILE).read_text())
    finally:
        service.close()
    assert _gone(pid)
    assert not compiles.bytecode_pending(install.root)


def test_a_ghost_of_a_removed_folder_recreated_by_compiling_is_removed(tmp_path: Path) -> None:
    from orchestra import bytecode

    home = tmp_path / "home"
    generation = home / "installs" / "abc"
    (generation / "env").mkdir(parents=True)
    lifeline = bytecode.Lifeline([str(generation)])
    assert lifeline.alive()
    shutil.rmtree(home)
    assert not lifeline.alive()
    # what a compile racing with the removal recreates: the path down to a __pycache__
    ghost = generation / "env" / "pkg" / "__pycache__"
    ghost.mkdir(parents=True)
    (ghost / "mod.cpython-311.pyc").write_bytes(b"\0")
    lifeline.clean_ghosts()
    assert not home.exists()


def test_a_folder_recreated_by_someone_else_is_never_removed(tmp_path: Path) -> None:
    from orchestra import bytecode

    home = tmp_path / "home"
    generation = home / "installs" / "abc"
    generation.mkdir(parents=True)
    lifeline = bytecode.Lifeline([str(generation)])
    shutil.rmtree(home)
    home.mkdir()
    (home / "orchestra.db").write_text("a new data folder")
    (home / "installs" / "abc" / "__pycache__").mkdir(parents=True)
    lifeline.clean_ghosts()
    assert (home / "orchestra.db").exists()
