"""A catalogue of hostile inputs: each gets a clear error, and nothing is written or lost.

One data folder serves the whole file: an installed module, a done task and a task whose
module wrote links out of its output folder. Before each case the module rows, task rows and
the folders under ``installs/`` and ``tasks/`` are recorded; after it they must be the same.
Registration cases go through the command line (which reports one ``orchestra: error:``
line), the rest through the REST API (Flask's test client, and a sample over real HTTP).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestra.app import create_app
from orchestra.config import Settings, load_settings
from orchestra.limits import MAX_PAGE
from orchestra.service import Service
from tests.support.gitserver import git
from tests.support.helpers import clean_environ, free_port, http, run_cli
from tests.support.paths import DATA

if TYPE_CHECKING:
    from flask.testing import FlaskClient

MAX_UPLOAD = 256 * 1024  # bytes: small limits make the size cases cheap
MAX_UNPACKED = 4 * 1024 * 1024
CATALOGUE: list[str] = []  # every hostile input tried, for the summary at the end


@dataclass
class World:
    """The shared data folder, its service, and the ids of what it holds."""

    settings: Settings
    service: Service
    client: FlaskClient
    echo: int
    done_task: int
    escapes_task: int
    url: str = ""
    tried: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """What must not change: module and task records, install and task folders."""
        svc = self.service
        modules = [svc.get_module(m.id).to_dict() for m in svc.list_modules()]
        tasks = [t.to_dict() for t in svc.list_tasks(limit=MAX_PAGE).tasks]
        return {
            "modules": modules,
            "tasks": tasks,
            "installs": _names(self.settings.installs_dir),
            "task_dirs": _names(self.settings.tasks_dir),
            "outputs": _tree(self.settings.tasks_dir),
            "uploads": _names(self.settings.uploads_dir),
        }


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _tree(folder: Path) -> dict[str, int]:
    found = {}
    for path in folder.rglob("*"):
        if "output" in path.parts and not path.is_symlink() and path.is_file():
            found[str(path.relative_to(folder))] = path.stat().st_size
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Iterator[World]:
    """One installed module, one done task, one task that wrote escaping links; a live server."""
    from orchestra.api.server import ApiServer

    home = tmp_path_factory.mktemp("hostile") / "home"
    overrides = {"home": home, "uv_cache": str(uv_cache), "max_running": 2,
                 "max_upload": MAX_UPLOAD, "max_unpacked": MAX_UNPACKED,
                 "git_timeout": 20}  # fmt: skip
    settings = load_settings(overrides, environ={})
    service = Service(settings)
    service.start()
    echo = service.register(str(DATA / "modules" / "echo")).id
    escapes = service.register(str(DATA / "modules" / "escapes")).id
    done = service.run(echo, {"start": "2020-01-01", "text": "kept"}).id
    links = service.run(escapes, {}).id
    for task_id in (done, links):
        assert service.get_task(task_id, wait=60).status == "done"
    server = ApiServer(settings.with_overrides(port=0), service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = create_app(service=service).test_client()
    world = World(settings, service, client, echo, done, links, f"http://127.0.0.1:{server.port}")
    try:
        yield world
    finally:
        server.stop()
        thread.join(timeout=10)
        service.registry.join_background(timeout=60)
        service.close()
        _write_summary(tmp_path_factory)


def _write_summary(factory: pytest.TempPathFactory) -> None:
    summary = f"hostile inputs tried: {len(CATALOGUE)}"
    print(f"\n{summary}")
    (factory.getbasetemp() / "hostile-inputs.txt").write_text("\n".join([summary, *CATALOGUE]))


@pytest.fixture
def unchanged(world: World, request: pytest.FixtureRequest) -> Iterator[World]:
    """The world, checked to be exactly as it was once the test has run."""
    before = world.snapshot()
    yield world
    world.service.registry.join_background(timeout=60)
    assert world.snapshot() == before
    CATALOGUE.append(request.node.name)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A file that an injected command would create; it must never exist."""
    path = tmp_path / "injected"
    yield path
    assert not path.exists(), "an injected command ran"


def _body(answer: Any) -> Any:
    """A test client answer's JSON body."""
    return answer.json


def _assert_cli_error(code: int, err: str, *words: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("orchestra: error: ")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    for word in words:
        assert word in errors[0], errors[0]


def _assert_json_error(answer: Any, status: int | set[int], *words: str) -> dict[str, Any]:
    statuses = {status} if isinstance(status, int) else status
    assert answer.status_code in statuses, answer.get_data(as_text=True)[:500]
    assert answer.is_json, answer.get_data(as_text=True)[:500]
    body: dict[str, Any] = answer.json
    assert isinstance(body["error"], str) and body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    return body


# -- metadata ----------------------------------------------------------------------------


def _valid_metadata() -> dict[str, Any]:
    return {
        "name": "hostile",
        "description": "a module with one thing wrong",
        "args": ["start", "stop"],
        "output": {"type": "files"},
        "install": {"executable": "tinymod", "files": ["tinymod"]},
    }


def _module(folder: Path, change: Callable[[dict[str, Any], Path], Any]) -> Path:
    package = folder / "tinymod"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print('ran')\n")
    metadata = _valid_metadata()
    replaced = change(metadata, folder)
    text = replaced if isinstance(replaced, str) else json.dumps(metadata)
    (folder / "metadata.json").write_text(text)
    return folder


def _drop(key: str) -> Callable[[dict[str, Any], Path], None]:
    return lambda meta, _folder: meta.pop(key) and None


def _install(key: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    return lambda meta, _folder: meta["install"].__setitem__(key, value)


def _top(key: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    return lambda meta, _folder: meta.__setitem__(key, value)


def _link_outside(meta: dict[str, Any], folder: Path) -> None:
    outside = folder.parent / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("secret")
    (folder / "linked").symlink_to(outside)
    meta["install"]["files"] = ["tinymod", "linked"]


def _link_inside_package(meta: dict[str, Any], folder: Path) -> None:
    (folder / "tinymod" / "passwd").symlink_to("/etc/passwd")


def _dotdot_file(meta: dict[str, Any], folder: Path) -> None:
    (folder.parent / "outside.py").write_text("x = 1\n")
    meta["install"]["files"] = ["tinymod", "../outside.py"]


def _requirements(text: str) -> Callable[[dict[str, Any], Path], None]:
    def change(meta: dict[str, Any], folder: Path) -> None:
        (folder / "requirements.txt").write_text(text)

    return change


METADATA_CASES = {
    "missing-name": (_drop("name"), ["name"]),
    "missing-description": (_drop("description"), ["description"]),
    "missing-args": (_drop("args"), ["args"]),
    "missing-output": (_drop("output"), ["output"]),
    "missing-install": (_drop("install"), ["install"]),
    "name-is-a-number": (_top("name", 42), ["name"]),
    "args-is-a-string": (_top("args", "start"), ["args"]),
    "arg-of-unknown-type": (_top("args", [["x", "complex"]]), ["args"]),
    "defaults-is-a-string": (_top("defaults", "none"), ["defaults"]),
    "files-is-a-string": (_install("files", "tinymod"), ["files"]),
    "executable-is-a-shell-command": (_install("executable", "tinymod; touch x"), ["executable"]),
    "executable-is-a-path": (_install("executable", "../tinymod"), ["executable"]),
    "executable-is-an-option": (_install("executable", "-c"), ["executable"]),
    "executable-is-empty": (_install("executable", ""), ["executable"]),
    "files-with-dotdot": (_dotdot_file, ["files"]),
    "files-absolute": (_install("files", ["tinymod", "/etc"]), ["files"]),
    "files-missing": (_install("files", ["tinymod", "nothere"]), ["nothere"]),
    "files-symlink-leading-outside": (_link_outside, ["linked"]),
    "package-symlink-to-etc-passwd": (_link_inside_package, ["passwd"]),
    "metadata-not-json": (lambda meta, folder: '{"name": "x",', ["metadata.json"]),
    "metadata-a-list": (lambda meta, folder: "[]", ["metadata.json"]),
    "requirements-option-line": (_requirements("-r /etc/passwd\n"), ["-r"]),
    "requirements-index-url": (_requirements("--index-url http://127.0.0.1:9/\nx\n"), ["index"]),
    "python-version-missing": (_install("python_version", "2.1"), ["2.1"]),
}


@pytest.mark.parametrize("case", list(METADATA_CASES), ids=list(METADATA_CASES))
def test_bad_metadata_is_refused_by_register_with_one_error_line(
    unchanged: World, tmp_path: Path, case: str
) -> None:
    change, words = METADATA_CASES[case]
    folder = _module(tmp_path / "module", change)
    code, _out, err = run_cli(["register", str(folder)], unchanged.settings)
    _assert_cli_error(code, err, *words)
    assert not (tmp_path / "x").exists()


# -- sources -----------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git repository holding a valid module in the sub-folder ``mod``."""
    folder = _module(tmp_path / "repo" / "mod", lambda meta, _f: None).parent
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "module")
    return folder


def _source_cases(tmp: Path, repo: Path, mark: Path) -> dict[str, tuple[list[str], list[str]]]:
    closed = free_port()
    plain = tmp / "plain"
    url = f"file://{repo}"
    return {
        "folder-not-there": ([str(tmp / "missing")], ["missing"]),
        "folder-without-metadata": ([str(plain)], ["metadata.json"]),
        "ext-transport": ([f"ext::sh -c touch% {mark}"], ["ext::"]),
        "fd-transport": (["fd::7"], ["fd::"]),
        "url-is-an-upload-pack-option": (["--", f"--upload-pack=touch {mark}"], ["'-'"]),
        "ssh-host-is-an-option": ([f"ssh://-oProxyCommand=touch%20{mark}/x"], ["-oproxycommand"]),
        "unknown-scheme": (["ftp://127.0.0.1/x.git"], ["ftp"]),
        "closed-port-http": ([f"http://127.0.0.1:{closed}/m.git"], [str(closed)]),
        "closed-port-git": ([f"git://127.0.0.1:{closed}/m.git"], [str(closed)]),
        "file-url-not-a-repository": ([f"file://{plain}"], ["plain"]),
        "ref-not-there": ([url, "--ref", "no-such-branch"], ["no-such-branch"]),
        "ref-is-an-option": ([url, "--ref", f"--upload-pack=touch {mark}"], ["ref"]),
        "subdir-not-there": ([url, "--subdir", "nothere"], ["nothere"]),
        "subdir-escapes-the-clone": ([url, "--subdir", "../.."], ["subdir"]),
        "subdir-absolute": ([url, "--subdir", "/etc"], ["subdir"]),
        "folder-subdir-escapes": ([str(repo), "--subdir", "../../.."], ["subdir"]),
    }


SOURCE_IDS = list(_source_cases(Path("/x"), Path("/x"), Path("/x")))


@pytest.mark.parametrize("case", SOURCE_IDS, ids=SOURCE_IDS)
def test_a_bad_source_is_refused_by_register_with_one_error_line(
    unchanged: World, tmp_path: Path, repo: Path, marker: Path, case: str
) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("no module here")
    argv, words = _source_cases(tmp_path, repo, marker)[case]
    began = time.monotonic()
    code, _out, err = run_cli(["register", *argv], unchanged.settings)
    _assert_cli_error(code, err, *words)
    assert time.monotonic() - began < 15, "a refused source took too long"


@pytest.mark.parametrize(
    "source",
    ["ext::sh -c touch% {mark}", "--upload-pack=touch {mark}", "/no/such/folder"],
    ids=["ext-transport", "upload-pack-option", "missing-folder"],
)
def test_a_bad_source_posted_to_the_api_is_a_400(
    unchanged: World, marker: Path, source: str
) -> None:
    answer = unchanged.client.post("/modules", json={"source": source.format(mark=marker)})
    _assert_json_error(answer, 400, "source")


# -- zip uploads -------------------------------------------------------------------------


def _zip(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with (
        warnings.catch_warnings(),  # a duplicate name is one of the hostile cases
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        warnings.simplefilter("ignore", UserWarning)
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def _good_members() -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [
        ("metadata.json", json.dumps(_valid_metadata()).encode()),
        ("tinymod/__init__.py", b""),
        ("tinymod/__main__.py", b"print('ran')\n"),
    ]


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("tinymod/passwd")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


ZIP_CASES: dict[str, Callable[[], bytes]] = {
    "member-with-dotdot": lambda: _zip([*_good_members(), ("../../evil.py", b"x")]),
    "member-absolute": lambda: _zip([*_good_members(), ("/tmp/evil.py", b"x")]),
    "member-symlink": lambda: _zip([*_good_members(), (_symlink_member(), b"/etc/passwd")]),
    "decompression-bomb": lambda: _zip([*_good_members(), ("zeros", bytes(MAX_UNPACKED * 4))]),
    "duplicate-member": lambda: _zip([*_good_members(), ("metadata.json", b"{}")]),
    "not-a-zip": lambda: b"this is not a zip archive\n" * 10,
}


@pytest.mark.parametrize("case", list(ZIP_CASES), ids=list(ZIP_CASES))
def test_a_hostile_zip_upload_is_refused(unchanged: World, case: str) -> None:
    data = ZIP_CASES[case]()
    assert len(data) < MAX_UPLOAD
    answer = unchanged.client.post(
        "/modules", data={"file": (io.BytesIO(data), "module.zip")},
        content_type="multipart/form-data",
    )  # fmt: skip
    _assert_json_error(answer, {400, 413})
    assert not Path("/tmp/evil.py").exists()


def test_a_zip_upload_over_the_size_limit_is_a_413(unchanged: World) -> None:
    data = _zip([*_good_members(), ("noise", os.urandom(MAX_UPLOAD))])
    answer = unchanged.client.post(
        "/modules", data={"file": (io.BytesIO(data), "module.zip")},
        content_type="multipart/form-data",
    )  # fmt: skip
    _assert_json_error(answer, 413)


def test_an_uploaded_zip_without_a_module_ends_in_error_leaving_no_files(world: World) -> None:
    installs = _names(world.settings.installs_dir)
    data = _zip(_good_members()[1:])
    answer = world.client.post(
        "/modules", data={"file": (io.BytesIO(data), "module.zip")},
        content_type="multipart/form-data",
    )  # fmt: skip
    assert answer.status_code == 202  # only unpacking can tell: the record says why
    module = _body(world.client.get(f"/module/{_body(answer)['id']}?wait=1"))
    deadline = time.monotonic() + 30
    while module["status"] == "installing" and time.monotonic() < deadline:
        time.sleep(0.1)
        module = _body(world.client.get(f"/module/{_body(answer)['id']}"))
    assert module["status"] == "error" and "metadata.json" in module["error"]
    assert _names(world.settings.installs_dir) == installs
    assert _names(world.settings.uploads_dir) == []
    assert world.client.delete(f"/module/{module['id']}").status_code == 204
    CATALOGUE.append("zip-without-metadata")


# -- run arguments -----------------------------------------------------------------------

RUN_CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "unknown-argument": ("?colour=red", {}, ["colour"]),
    "int-given-letters": ("?count=abc", {}, ["count"]),
    "int-given-a-fraction": ("?count=1.5", {}, ["count"]),
    "float-given-letters": ("?scale=big", {}, ["scale"]),
    "json-list-value": ("", {"count": [1, 2]}, ["count"]),
    "json-object-value": ("", {"text": {"a": 1}}, ["text"]),
    "enormous-value": ("", {"text": "x" * 100_000}, ["text"]),
    "nul-in-query-value": ("?text=a%00b", {}, ["NUL"]),
    "nul-in-json-value": ("", {"text": "a\u0000b"}, ["NUL"]),
    "nul-in-argument-name": ("", {"te\u0000xt": "a"}, ["NUL"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_a_bad_run_argument_is_a_400_naming_it(unchanged: World, case: str) -> None:
    query, body, words = RUN_CASES[case]
    path = f"/module/{unchanged.echo}/run{query}"
    answer = unchanged.client.post(path, json=body) if body else unchanged.client.post(path)
    _assert_json_error(answer, {400, 413}, *words)


LITERAL = {
    "shell-metacharacters": "; rm -rf / && echo $(id) `id` | cat > /tmp/x < y * ? ~ &",
    "quotes-and-backslashes": '\'"\\\' "$HOME" \\n',
    "looks-like-an-option": "--count",
    "line-breaks-and-tabs": "line1\nline2\tend",
    "unicode": "Ωmega – ∞ 🚀",
}


@pytest.mark.parametrize("case", list(LITERAL), ids=list(LITERAL))
def test_odd_argument_text_reaches_the_module_unchanged(world: World, case: str) -> None:
    text = LITERAL[case]
    answer = world.client.post(f"/module/{world.echo}/run", json={"text": text, "count": "7"})
    assert answer.status_code == 202, answer.json
    task = _body(world.client.get(f"/task/{_body(answer)['task']}?wait=60"))
    assert task["status"] == "done", task
    received = json.loads(world.client.get(f"/task/{task['id']}/output/args.json").data)
    assert received["args"]["--text"] == text
    assert received["args"]["--count"] == "7"
    CATALOGUE.append(f"literal argument: {case}")


# -- ids ---------------------------------------------------------------------------------

ID_CASES = ["abc", "-1", "0", "1.5", "99999999999999999999999", "1e3", "%20", "0x10"]
ID_PATHS = ["/module/{id}", "/tasks/{id}", "/task/{id}/output", "/task/{id}/log"]


@pytest.mark.parametrize("bad_id", ID_CASES, ids=[f"id-{i}" for i in range(len(ID_CASES))])
@pytest.mark.parametrize("path", ID_PATHS, ids=["module", "task", "output", "log"])
def test_an_id_that_is_not_a_positive_integer_is_a_json_404(
    unchanged: World, path: str, bad_id: str
) -> None:
    _assert_json_error(unchanged.client.get(path.format(id=bad_id)), 404)


@pytest.mark.parametrize("bad_id", ["-1", "99999999999999999999999", "abc"])
def test_changing_requests_on_impossible_ids_are_json_404s(unchanged: World, bad_id: str) -> None:
    client = unchanged.client
    _assert_json_error(client.post(f"/module/{bad_id}/run", json={}), 404)
    _assert_json_error(client.delete(f"/module/{bad_id}"), 404)
    _assert_json_error(client.post(f"/task/{bad_id}/kill"), 404)
    _assert_json_error(client.delete(f"/task/{bad_id}"), 404)


# -- output paths ------------------------------------------------------------------------

OUTPUT_PATHS = {
    "dotdot": "../../orchestra.db",
    "encoded-dotdot": "%2e%2e/%2e%2e/orchestra.db",
    "double-encoded": "%252e%252e/orchestra.db",
    "absolute": "/etc/passwd",
    "symlink-to-etc-passwd": "passwd",
    "through-a-symlink-to-root": "root/etc/passwd",
    "through-a-symlink-upwards": "up/orchestra.db",
    "record-beside-the-output": "../result.json",
    "nul": "ok.txt%00",
}


@pytest.mark.parametrize("case", list(OUTPUT_PATHS), ids=list(OUTPUT_PATHS))
def test_an_output_path_leaving_the_output_folder_is_a_404(unchanged: World, case: str) -> None:
    path = f"/task/{unchanged.escapes_task}/output/{OUTPUT_PATHS[case]}"
    answer = unchanged.client.get(path)
    _assert_json_error(answer, {400, 404})
    assert b"root:" not in answer.data


def test_links_out_of_the_output_folder_are_neither_listed_nor_zipped(unchanged: World) -> None:
    task = _body(unchanged.client.get(f"/task/{unchanged.escapes_task}"))
    assert [f["name"] for f in task["output"]] == ["ok.txt"]
    answer = unchanged.client.get(f"/task/{unchanged.escapes_task}/output")
    assert answer.status_code == 200 and answer.data == b"inside\n"


# -- bodies ------------------------------------------------------------------------------

BODY_CASES: dict[str, tuple[str, bytes, str, int, str]] = {
    "malformed-json": ("/modules", b'{"source": ', "application/json", 400, "JSON"),
    "json-array": ("/modules", b'["x"]', "application/json", 400, "object"),
    "json-null": ("/modules", b"null", "application/json", 400, "object"),
    "not-utf8": ("/modules", b'{"source": "\xff"}', "application/json", 400, "UTF-8"),
    "text-plain": ("/modules", b"source=/x", "text/plain", 400, "text/plain"),
    "xml": ("/module/{echo}/run", b"<a/>", "application/xml", 400, "xml"),
    "deeply-nested": ("/modules", b"[" * 100_000, "application/json", 400, "nested"),
    "deeply-nested-run": ("/module/{echo}/run", b'{"a":' * 50_000, "application/json", 400, ""),
    "too-large": ("/modules", b'{"source": "' + b"x" * MAX_UPLOAD + b'"}',
                  "application/json", 413, ""),
    "unknown-field": ("/modules", b'{"source": "/x", "branch": "main"}', "application/json",
                      400, "branch"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BODY_CASES), ids=list(BODY_CASES))
def test_a_bad_body_is_a_json_4xx(unchanged: World, case: str) -> None:
    path, data, content_type, status, word = BODY_CASES[case]
    answer = unchanged.client.post(
        path.format(echo=unchanged.echo), data=data, content_type=content_type
    )
    _assert_json_error(answer, status, word)


# -- the same over real HTTP -------------------------------------------------------------

HTTP_CASES: dict[str, tuple[str, str, bytes | None, dict[str, str], int]] = {
    "ext-source": ("POST", "/modules", b'{"source": "ext::sh -c id"}',
                   {"Content-Type": "application/json"}, 400),
    "deeply-nested": ("POST", "/modules", b"[" * 100_000,
                      {"Content-Type": "application/json"}, 400),
    "too-large": ("POST", "/modules", b"x" * (MAX_UPLOAD + 10),
                  {"Content-Type": "application/json"}, 413),
    "nul-argument": ("POST", "/module/{echo}/run?text=a%00b", None, {}, 400),
    "enormous-id": ("GET", "/module/99999999999999999999999", None, {}, 404),
    "encoded-dotdot": ("GET", "/task/{task}/output/%2e%2e/%2e%2e/orchestra.db", None, {}, 404),
    "symlink-output": ("GET", "/task/{task}/output/passwd", None, {}, 404),
    "not-a-zip-upload": ("POST", "/modules",
                         b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.zip\""
                         b"\r\n\r\nnot a zip\r\n--b--\r\n",
                         {"Content-Type": "multipart/form-data; boundary=b"}, 400),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HTTP_CASES), ids=list(HTTP_CASES))
def test_a_real_server_answers_hostile_requests_with_json_errors(
    unchanged: World, case: str
) -> None:
    method, path, body, headers, status = HTTP_CASES[case]
    url = unchanged.url + path.format(echo=unchanged.echo, task=unchanged.escapes_task)
    answer = http(method, url, body=body, headers=headers)
    assert answer.status == status, answer.body[:300]
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["error"] and b"root:" not in answer.body


def test_the_shared_world_still_works_after_every_hostile_input(world: World) -> None:
    # runs last in this file: the module and its old task are intact and usable
    old = world.client.get(f"/task/{world.done_task}/output/args.json")
    assert json.loads(old.data)["args"]["--text"] == "kept"
    answer = world.client.post(f"/module/{world.echo}/run", json={"text": "after"})
    task = _body(world.client.get(f"/task/{_body(answer)['task']}?wait=60"))
    assert task["status"] == "done"
    assert shutil.which("git")  # the source cases above really reached git


# -- access ------------------------------------------------------------------------------

TOKEN = "Tok3n-for-Hostile-tests"
CHANGING = [("POST", "/modules"), ("DELETE", "/module/1"), ("POST", "/module/1/run"),
            ("GET", "/modules/1/run"), ("POST", "/task/1/kill"), ("GET", "/tasks/1/kill"),
            ("DELETE", "/task/1")]  # fmt: skip
BAD_HEADERS = {
    "missing": {},
    "wrong-token": {"Authorization": "Bearer nope"},
    "token-in-other-case": {"Authorization": f"Bearer {TOKEN.swapcase()}"},
    "token-in-upper-case": {"Authorization": f"Bearer {TOKEN.upper()}"},
    "no-scheme": {"Authorization": TOKEN},
    "basic-scheme": {"Authorization": f"Basic {TOKEN}"},
    "token-with-suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "token-prefix-only": {"Authorization": f"Bearer {TOKEN[:-1]}"},
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Iterator[Any]:
    """A real `serve` process with an API token."""
    from tests.support.server import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("guarded") / "home", uv_cache, api_token=TOKEN)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("header", list(BAD_HEADERS), ids=list(BAD_HEADERS))
def test_a_real_server_refuses_every_changing_route_without_the_right_token(
    guarded: Any, header: str
) -> None:
    for method, path in CHANGING:
        answer = http(method, guarded.url + path, body=b"{}", headers={
            "Content-Type": "application/json", **BAD_HEADERS[header]})  # fmt: skip
        assert answer.status == 401, (method, path, answer.body)
        assert "Bearer" in answer.json()["error"]
    assert guarded.call("GET", "/modules").json() == []  # nothing was registered
    CATALOGUE.append(f"token: {header}")


def test_with_a_token_reads_stay_open_and_the_right_token_passes(guarded: Any) -> None:
    for path in ("/modules", "/tasks", "/health", "/openapi.json"):
        assert http("GET", guarded.url + path).status == 200
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for method, path in CHANGING:
        answer = http(method, guarded.url + path, body=b"{}", headers=good)
        assert answer.status in {400, 404}, (method, path, answer.body)  # the route answered


def test_protected_reads_need_the_token_on_a_real_server(tmp_path: Path, uv_cache: Path) -> None:
    from tests.support.server import ServerProcess

    server = ServerProcess(tmp_path / "home", uv_cache, api_token=TOKEN, protect_reads="1")
    try:
        server.start()
        assert http("GET", server.url + "/health").status == 200  # always open
        assert http("GET", server.url + "/modules").status == 401
        assert http("GET", server.url + "/tasks/1").status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert http("GET", server.url + "/modules", headers=good).status == 200
    finally:
        server.close()


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    from tests.support.paths import ROOT

    environ = clean_environ()
    environ.update(ORCHESTRA_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT / "src"), **env)
    argv = [sys.executable, "-m", "orchestra", "serve", "--host", "0.0.0.0", "--port", "0"]
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=30)


def test_serve_refuses_to_listen_on_all_addresses_without_a_token(tmp_path: Path) -> None:
    done = _serve(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("orchestra: error: refusing to listen on 0.0.0.0 without an API")
    assert "ORCHESTRA_API_TOKEN" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "orchestra.db").exists()
    CATALOGUE.append("serve on 0.0.0.0 without a token")


def test_serve_listens_on_all_addresses_when_told_it_is_insecure(
    tmp_path: Path, uv_cache: Path
) -> None:
    from tests.support.server import ServerProcess

    server = ServerProcess(tmp_path / "home", uv_cache, host="0.0.0.0", insecure="1")
    try:
        server.start()  # answers on 127.0.0.1, which 0.0.0.0 includes
        assert server.stop() == 0
    finally:
        server.close()
