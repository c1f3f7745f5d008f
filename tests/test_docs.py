"""The user guide: it builds strictly, every page is in reach, its references are the code's,
and the README's quick start and the module walk-through run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestra import docsgen
from tests.support.helpers import clean_environ, free_port, http, wait_for
from tests.support.markdown import Step, steps
from tests.support.paths import ROOT

DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent  # the environment's `orchestra`, `python` and `mkdocs`


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    env = {**clean_environ(), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*argv, "-d", str(site)], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_site_builds_in_strict_mode_and_loads_nothing_from_another_host(
    tmp_path: Path,
) -> None:
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    pages = list((tmp_path / "site").rglob("*.html"))
    assert len(pages) >= 15
    foreign = re.compile(r'<(?:link|script|img)\b[^>]*(?:href|src)="(?:https?:)?//', re.I)
    for page in pages:
        assert not foreign.search(page.read_text()), f"{page} loads from another host"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "security.md").open("a") as page:
        page.write("\nSee [the missing page](no-such-page.md#nowhere).\n")
    built = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-page.md" in built.stderr


def _nav_files(entries: Any) -> Iterator[str]:
    if isinstance(entries, str):
        yield entries
    elif isinstance(entries, list):
        for entry in entries:
            yield from _nav_files(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            yield from _nav_files(value)


def test_every_page_is_reachable_from_the_navigation() -> None:
    nav = list(_nav_files(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav)), "a page is listed twice"


@pytest.mark.parametrize("name", sorted(docsgen.pages()))
def test_each_generated_reference_matches_its_source(name: str) -> None:
    committed = DOCS / "reference" / name
    expected = docsgen.pages()[name]()
    assert committed.is_file() and committed.read_text() == expected, (
        f"docs/reference/{name} differs from the code: run `{docsgen.COMMAND}` "
        "(or `./dev docs`) and commit the result"
    )


def test_the_check_names_each_stale_page_and_the_command_that_regenerates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert docsgen.main(["--out", str(tmp_path)]) == 0
    assert docsgen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "cli.md").write_text("# edited by hand\n")
    capsys.readouterr()
    assert docsgen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cli.md differs from the code: run `python -m orchestra.docsgen`" in err
    assert "settings.md" not in err


def test_the_references_name_every_setting_command_and_route() -> None:
    import dataclasses

    from orchestra.cli.parser import build_parser
    from orchestra.config import Settings

    settings = (DOCS / "reference" / "settings.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`ORCHESTRA_{field.name.upper()}`" in settings
    cli = (DOCS / "reference" / "cli.md").read_text()
    for name, _ in docsgen._subcommands(build_parser()):
        assert f"## `{name}`" in cli
    rest = (DOCS / "reference" / "rest-api.md").read_text()
    for path in docsgen.openapi_document()["paths"]:
        assert f"{path}`" in rest


def test_the_readme_links_to_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert len(local) >= 10
    for target in local:
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


# -- the pages' commands, run as written ---------------------------------------------------


class PageRun:
    """The marked steps of one page run in order, in a fresh folder, against a real server."""

    def __init__(self, workdir: Path, env: dict[str, str], serve_cwd: Path) -> None:
        self.workdir = workdir
        self.env = env
        self.serve_cwd = serve_cwd
        self.port = int(env["ORCHESTRA_PORT"])
        self.exports = ""
        self.outputs: list[str] = []
        self.server: subprocess.Popen[bytes] | None = None

    def script(self, text: str) -> str:
        """A block's text with the exports before it and the test's port in its URLs."""
        return self.exports + text.replace("127.0.0.1:8470", f"127.0.0.1:{self.port}")

    def step(self, step: Step) -> None:
        """Do one step."""
        if step.kind == "file":
            target = self.workdir / step.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text)
        elif step.kind == "run":
            self.run(step.text)
        else:
            self.serve(step.first_command)

    def run(self, text: str) -> None:
        """Run a block with bash; it must succeed."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.script(text)], cwd=self.workdir,
            env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{text}\nexit {done.returncode}:\n{done.stdout}{done.stderr}"
        self.outputs.append(done.stdout)
        self.exports += "".join(
            line + "\n" for line in text.splitlines() if line.startswith("export ")
        )

    def serve(self, command: str) -> None:
        """Start the block's server in the background and wait until it answers."""
        log = (self.workdir / "server.log").open("wb")
        self.server = subprocess.Popen(
            ["bash", "-c", self.script(command)], cwd=self.serve_cwd, env=self.env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for(self._answers, bool, timeout=300, what=f"`{command}` answering /health")

    def _answers(self) -> bool:
        assert self.server is not None
        if self.server.poll() is not None:
            raise AssertionError(f"the server exited:\n{self.server_log()}")
        try:
            return http("GET", f"http://127.0.0.1:{self.port}/health", timeout=2).status == 200
        except OSError:
            return False

    def server_log(self) -> str:
        """What the server printed."""
        return (self.workdir / "server.log").read_text(errors="replace")

    def get(self, path: str) -> Any:
        """A JSON answer of the server."""
        return http("GET", f"http://127.0.0.1:{self.port}{path}", timeout=30).json()

    def stop(self) -> None:
        """Stop the server, if one was started."""
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=60)


@contextmanager
def page_run(tmp_path: Path, uv_cache: Path, serve_cwd: Path) -> Iterator[PageRun]:
    """A fresh data folder and working folder, with the project's commands on PATH."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = clean_environ()
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", ORCHESTRA_HOME=str(tmp_path / "home"),
        ORCHESTRA_PORT=str(free_port()), ORCHESTRA_UV_CACHE=str(uv_cache),
        PYTEST_ADDOPTS=f"--basetemp={tmp_path / 'author-pytest'} -p no:cacheprovider",
    )  # fmt: skip
    run = PageRun(workdir, env, serve_cwd)
    try:
        yield run
    finally:
        run.stop()


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path: Path, uv_cache: Path) -> None:
    """`./dev serve` on a fresh data folder, then the curl session (`./dev test` is this run)."""
    marked = steps(ROOT / "README.md")
    assert [s.kind for s in marked] == ["serve", "run"]
    assert marked[0].first_command == "./dev serve"
    with page_run(tmp_path, uv_cache, serve_cwd=ROOT) as run:
        for step in marked:
            run.step(step)
        modules, ran, task = run.outputs[0].splitlines()[:3]
        assert {m["name"] for m in json.loads(modules)} >= {"Example catalog"}
        assert json.loads(ran)["task"] == 1
        assert json.loads(task)["status"] == "done"
        catalog = (run.workdir / "catalog.txt").read_text()
        assert catalog.startswith("# Catalog generated by Orchestra;")
        assert "task sandbox:" in run.server_log()


@pytest.mark.slow
def test_getting_started_runs_as_written(tmp_path: Path, uv_cache: Path) -> None:
    """The same start, then the curl session and the command line of the guide's first page."""
    marked = steps(DOCS / "getting-started.md")
    assert [s.kind for s in marked] == ["serve", "run", "run"]
    with page_run(tmp_path, uv_cache, serve_cwd=ROOT) as run:
        for step in marked:
            run.step(step)
        assert (run.workdir / "catalog.txt").read_text().startswith("# Catalog generated")
        assert " Bz " in (run.workdir / "catalog-bz.txt").read_text()
        assert [t["status"] for t in run.get("/tasks")["tasks"]] == ["done", "done"]


@pytest.mark.slow
def test_the_module_walkthrough_runs_as_written(tmp_path: Path, uv_cache: Path) -> None:
    """From an empty folder to a registered, tested, trained module that a real server runs."""
    marked = steps(DOCS / "writing-a-module.md")
    kinds = [s.kind for s in marked]
    assert kinds.count("file") == 7 and "serve" in kinds
    with page_run(tmp_path, uv_cache, serve_cwd=tmp_path / "work") as run:
        for step in marked:
            run.step(step)
        assert "2 passed" in "".join(run.outputs)
        events = (run.workdir / "events.txt").read_text()
        assert "# Name: Southward Bz intervals;" in events
        assert re.search(r"^2024-01-0\dT\S+ 2024-01-0\dT\S+ -\d+\.\d\d$", events, re.M)
        module = run.get("/module/1")
        assert module["status"] == "installed" and module["name"] == "Southward Bz intervals"
        task = run.get("/task/2")
        assert task["status"] == "done" and task["args"]["threshold"] in ("-6", -6, -6.0)
        # the Training section: two versions, the default moved to the second, runs following
        versions = run.get("/module/1/models")["models"]
        assert [v["version"] for v in versions] == [2, 1]
        assert all("threshold" in v["metrics"] for v in versions)
        assert run.get("/module/1/aliases")["aliases"] == {"default": 2}
        runs = [t for t in run.get("/tasks")["tasks"] if t["kind"] == "run"]
        assert [t["model"]["version"] for t in runs[:2]] == [2, 1]  # newest first
