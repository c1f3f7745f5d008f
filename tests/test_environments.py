"""Environments built with the real uv: interpreters, requirements, scrubbing, bytecode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestra import compiles, environments, interpreters, requirements
from orchestra.config import Settings
from orchestra.errors import InstallError, InvalidInput
from orchestra.storage.files import InstallFolder, site_packages


def _python_reports(python: str | Path) -> str:
    code = "import platform; print(platform.python_version())"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def _build(
    settings: Settings, env: Path, requirements: list[str], python: str | None = None
) -> str:
    lines: list[str] = []
    version = environments.build_environment(
        env, requirements=requirements, python=python, settings=settings, log=lines.append
    )
    assert lines, "the installer's output goes to the log"
    return version


def test_comments_blank_lines_and_inline_comments_are_dropped() -> None:
    lines = [
        "# numeric",
        "",
        "numpy>=1.24  # arrays",
        "  six ",
        "pkg[extra]==1.0 ; python_version>'3'",
    ]
    assert requirements.check_requirements(lines) == [
        "numpy>=1.24",
        "six",
        "pkg[extra]==1.0 ; python_version>'3'",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "-r /etc/other.txt",
        "-e .",
        "--index-url https://evil.example/simple",
        "-c constraints.txt",
        "--extra-index-url=http://x",
        "pkg @ https://${SECRET_TOKEN}@host/pkg.whl",
        "./local_folder",
        "/abs/path/pkg.whl",
        "pkg @ file:///etc/something",
    ],
)
def test_option_lines_paths_and_variables_in_requirements_are_refused(line: str) -> None:
    with pytest.raises(InvalidInput, match="install.requirements") as caught:
        requirements.check_requirements(["six", line])
    assert line[:20] in caught.value.message


def test_a_setting_allows_option_lines_for_trusted_deployments() -> None:
    lines = ["--index-url https://pypi.org/simple", "six"]
    assert requirements.check_requirements(lines, allow_options=True) == lines


def test_no_version_means_the_interpreter_running_orchestra() -> None:
    python = interpreters.find_python(None)
    assert Path(python).resolve() == Path(python)
    assert _python_reports(python) == ".".join(map(str, sys.version_info[:3]))


def test_a_requested_version_finds_an_interpreter_reporting_that_version() -> None:
    if not any(v.startswith("3.10.") for v in interpreters.available_pythons()):
        pytest.skip("no Python 3.10 on this machine")
    assert _python_reports(interpreters.find_python("3.10")).startswith("3.10.")


def test_a_missing_version_is_an_error_listing_the_available_ones() -> None:
    with pytest.raises(InstallError) as caught:
        interpreters.find_python("3.4")
    assert caught.value.step == "python"
    assert "3.4" in caught.value.message
    current = ".".join(map(str, sys.version_info[:3]))
    assert current in caught.value.message


def test_an_environment_gets_its_requirements_and_reports_its_python(
    settings: Settings, tmp_path: Path
) -> None:
    env = tmp_path / "gen" / "env"
    version = _build(settings, env, ["six==1.17.0"])
    assert version == ".".join(map(str, sys.version_info[:3]))
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import six; print(six.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "1.17.0"


def test_a_second_environment_with_the_same_requirements_builds_from_the_cache(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "env", tmp_path / "b" / "env"
    _build(settings, first, ["numpy"])
    _build(settings, second, ["numpy"])
    python = second / "bin" / "python"
    subprocess.run([str(python), "-c", "import numpy"], check=True)
    # linked from the installer's cache, not copied: both environments share one file on disk
    (site_a,), (site_b,) = site_packages(first), site_packages(second)
    shared = (site_a / "numpy" / "__init__.py").stat(), (site_b / "numpy" / "__init__.py").stat()
    assert shared[0].st_ino == shared[1].st_ino and shared[0].st_nlink >= 3


def test_an_unknown_requirement_fails_the_install_step_with_the_installers_message(
    settings: Settings, tmp_path: Path
) -> None:
    missing = "orchestra-no-such-package-7f3a9c"
    with pytest.raises(InstallError) as caught:
        _build(settings, tmp_path / "env", [missing])
    assert caught.value.step == "install"
    assert missing in caught.value.message
    assert missing in caught.value.log


def test_the_installer_ignores_the_servers_uv_variables(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an index that would fail every download if uv read it from the environment
    monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_OFFLINE", "1")
    _build(settings, tmp_path / "env", ["six==1.17.0"])


def test_a_version_that_is_installed_gives_an_environment_with_that_interpreter(
    settings: Settings, tmp_path: Path
) -> None:
    if not any(v.startswith("3.10.") for v in interpreters.available_pythons()):
        pytest.skip("no Python 3.10 on this machine")
    version = _build(settings, tmp_path / "env", [], python=interpreters.find_python("3.10"))
    assert version.startswith("3.10.")
    assert _python_reports(tmp_path / "env" / "bin" / "python") == version


def test_background_compilation_writes_bytecode_and_removal_stops_it(
    settings: Settings, tmp_path: Path
) -> None:
    folder = InstallFolder(tmp_path, "gen")
    folder.code.mkdir(parents=True)
    (folder.code / "tool.py").write_text("VALUE = 1\n")
    _build(settings, folder.env, ["six==1.17.0"])
    pid = compiles.start_bytecode_compile(folder, settings)
    assert pid and (folder.root / compiles.COMPILE_PID_FILE).read_text() == str(pid)
    assert compiles.wait_for_bytecode(folder.root, timeout=60)
    assert not compiles.bytecode_pending(folder.root)
    site = site_packages(folder.env)[0]
    assert list(site.glob("__pycache__/six.*.pyc"))
    assert list(folder.code.glob("__pycache__/tool.*.pyc"))
    compiles.start_bytecode_compile(folder, settings)
    environments.remove_generation(folder.root)
    assert not folder.root.exists()


def test_bytecode_compiled_once_reaches_every_later_environment_through_the_cache(
    settings: Settings, tmp_path: Path
) -> None:
    first = InstallFolder(tmp_path, "first")
    first.code.mkdir(parents=True)
    _build(settings, first.env, ["idna==3.10"])
    compiles.start_bytecode_compile(first, settings)
    assert compiles.wait_for_bytecode(first.root, timeout=120)
    compiled = list(site_packages(first.env)[0].glob("idna/__pycache__/*.pyc"))
    assert compiled and all(p.stat().st_nlink >= 2 for p in compiled)  # linked from the cache

    second = InstallFolder(tmp_path, "second")
    _build(settings, second.env, ["idna==3.10"])
    # no compilation ran for the second one: its bytecode came with the installer's links
    linked = list(site_packages(second.env)[0].glob("idna/__pycache__/*.pyc"))
    assert {p.name for p in linked} == {p.name for p in compiled}
    # Python accepts them: an import that may write bytecode leaves the linked files alone
    # (a stale .pyc would be rewritten as a new, unlinked file)
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([str(second.python), "-c", "import idna.core"], env=env, check=True)
    assert all(p.stat().st_nlink >= 3 for p in linked)


def _install_log(settings: Settings, env: Path, requirements: list[str]) -> str:
    lines: list[str] = []
    environments.build_environment(
        env, requirements=requirements, python=None, settings=settings, log=lines.append
    )
    return "\n".join(lines)


def test_requirements_the_cache_holds_are_resolved_without_the_index(
    settings: Settings, tmp_path: Path
) -> None:
    fresh = settings.with_overrides(uv_cache=str(tmp_path / "cache"))
    first = _install_log(fresh, tmp_path / "one", ["six==1.17.0"])
    assert "resolving online" in first  # an empty cache cannot answer: the index is asked
    second = _install_log(fresh, tmp_path / "two", ["six==1.17.0"])
    assert "--offline" in second and "resolving online" not in second
    assert list((tmp_path / "two").glob("lib/python*/site-packages/six.py"))


def test_resolving_from_the_cache_first_can_be_turned_off(
    settings: Settings, tmp_path: Path
) -> None:
    online = settings.with_overrides(prefer_cached=False)
    log = _install_log(online, tmp_path / "env", ["six==1.17.0"])
    assert "--offline" not in log


def _legacy_module(folder: Path, install: dict[str, object]) -> Path:
    import json

    folder.mkdir(parents=True)
    (folder / "main.py").write_text("print('hi')\n")
    (folder / "legacy.txt").write_text("# from an older module\nsix==1.17.0\n")
    (folder / "requirements.txt").write_text("not-used-when-requirements_file-is-given\n")
    metadata = {
        "name": "legacy", "description": "", "args": [], "output": {"type": "files"},
        "install": {"executable": "main", "files": ["main.py"], **install},
    }  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_requirements_file_and_requirements_are_merged(settings: Settings, tmp_path: Path) -> None:
    from orchestra.manifest import load_manifest

    both = _legacy_module(
        tmp_path / "both", {"requirements_file": "legacy.txt", "requirements": ["idna==3.10"]}
    )
    lines = requirements.read_requirements(both, load_manifest(both), settings)
    assert lines == ["six==1.17.0", "idna==3.10"]
    alone = _legacy_module(tmp_path / "alone", {"requirements_file": "legacy.txt"})
    assert requirements.read_requirements(alone, load_manifest(alone), settings) == ["six==1.17.0"]
    escaping = _legacy_module(tmp_path / "escaping", {"requirements_file": "../x.txt"})
    with pytest.raises(Exception, match="install.requirements_file"):
        requirements.read_requirements(escaping, load_manifest(escaping), settings)


def test_a_module_with_requirements_file_and_requirements_gets_both_installed(
    settings: Settings, tmp_path: Path
) -> None:
    from orchestra.service import Service

    folder = _legacy_module(
        tmp_path / "m", {"requirements_file": "legacy.txt", "requirements": ["idna==3.10"]}
    )
    service = Service(settings.with_overrides(compile_bytecode=False))
    try:
        module = service.register(str(folder))
        _manifest, install = service.registry.runnable(module.id)
    finally:
        service.close()
    code = "import six, idna; print(six.__version__, idna.__version__)"
    out = subprocess.run(
        [str(install.python), "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1.17.0", "3.10"]
