"""The HTTP client's pieces: server URLs, error answers, records read back from JSON."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from orchestra import client
from orchestra.errors import (
    InstallError,
    InvalidInput,
    InvalidMetadata,
    NotFound,
    OrchestraError,
    SourceError,
    TooLarge,
    Unauthorized,
    Unreachable,
    WrongState,
)
from orchestra.records import ModuleInfo, OutputFile, TaskInfo, TaskPage
from tests.support.paths import DATA, EXAMPLES

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000)


@pytest.mark.parametrize(
    ("url", "shown", "prefix"),
    [("http://h:8470", "http://h:8470", ""), ("https://h/api/", "https://h/api", "/api"),
     (" http://127.0.0.1:1/ ", "http://127.0.0.1:1", "")],
)  # fmt: skip
def test_a_server_url_keeps_its_host_port_and_prefix(url: str, shown: str, prefix: str) -> None:
    endpoint = client.parse_url(url)
    assert (endpoint.url, endpoint.prefix) == (shown, prefix)


@pytest.mark.parametrize(
    "url", ["", "h:8470", "ftp://h", "http://", "http://h:99999", "http://h/?q=1", "http://u@h"]
)
def test_a_bad_server_url_is_invalid_input_naming_the_url(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.parse_url(url)
    assert caught.value.key == "url" and caught.value.message.startswith("url: ")


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [(400, InvalidInput, 2), (401, Unauthorized, 2), (404, NotFound, 3), (409, WrongState, 4),
     (413, TooLarge, 2)],
)  # fmt: skip
def test_an_error_answer_becomes_the_error_a_service_raises(
    status: int, kind: type[OrchestraError], code: int
) -> None:
    body = json.dumps({"error": "what went wrong", "key": "start"}).encode()
    error = client.error_from_answer(status, "Reason", body)
    assert type(error) is kind and error.exit_code == code and error.key == "start"
    assert error.message.startswith("what went wrong")


@pytest.mark.parametrize(
    "kind", [k for k in OrchestraError.__subclasses__() if k.http_status != 400]
)
def test_every_status_of_the_family_comes_back_as_its_own_kind(
    kind: type[OrchestraError],
) -> None:
    body = json.dumps(kind("server's words").to_dict()).encode()
    error = client.error_from_answer(kind.http_status, "Reason", body)
    assert type(error) is kind and error.exit_code == kind.exit_code
    assert error.message.startswith("server's words")


def test_install_and_metadata_errors_keep_their_own_words() -> None:
    install = InstallError("environment", "uv said no", log="full log")
    error = client.error_from_answer(400, "Bad Request", json.dumps(install.to_dict()).encode())
    assert isinstance(error, InstallError)
    assert (error.message, error.step, error.log) == (install.message, "environment", "full log")
    metadata = InvalidMetadata(["name: required", "args: must be a list"])
    error = client.error_from_answer(400, "", json.dumps(metadata.to_dict()).encode())
    assert isinstance(error, InvalidMetadata) and error.message == metadata.message


def test_an_answer_that_is_not_ours_names_its_status() -> None:
    error = client.error_from_answer(502, "Bad Gateway", b"<html>proxy</html>")
    assert error.message == "the server answered 502 Bad Gateway"
    assert isinstance(error, Unreachable) and error.exit_code == 7  # a proxy without its server
    error = client.error_from_answer(418, "I'm a teapot", b"")
    assert error.message == "the server answered 418 I'm a teapot" and error.exit_code == 1


@pytest.mark.parametrize(
    ("message", "kind"),
    [("python failed: no 2.1", InstallError),
     ("invalid metadata.json: name: required", InvalidInput),
     ("a module named 'x' already exists (module 1, installed)", WrongState),
     ("ref 'v9' not found in git://h/r", SourceError), ("something else", OrchestraError)],
)  # fmt: skip
def test_a_failed_installation_is_raised_as_the_local_error(
    message: str, kind: type[OrchestraError]
) -> None:
    module = _module(status="error", error=message)
    error = client._failed_install(module)
    assert type(error) is kind and error.message == message


def _module(**changes: object) -> ModuleInfo:
    fields: dict[str, object] = {
        "id": 3, "name": "M", "description": "d", "version": "1", "status": "installed",
        "output_type": "catalog", "metadata": {"name": "M", "args": ["start"], "extra": [1]},
        "source": "git://h/r", "source_kind": "git", "ref": "v1", "subdir": None,
        "commit": "abc", "python_version": "3.11", "created": WHEN, "updated": WHEN,
        "error": None, "install_log": "log",
    }  # fmt: skip
    return ModuleInfo(**{**fields, **changes})  # type: ignore[arg-type]


def test_records_read_back_from_json_render_the_same_json() -> None:
    module = _module(lock={"python": "3.11.7", "packages": ["numpy==2.1.0"]})
    task = TaskInfo(7, 3, {"start": "x"}, "done", WHEN, WHEN, None, 0, None, (OutputFile("a", 1),))
    page = TaskPage((task,), total=9, limit=1, offset=0, next_cursor="c")
    sent = json.loads(json.dumps(module.to_dict()))
    assert client.module_info(sent) == module
    assert client.module_info(sent).to_dict() == sent
    assert client.module_summary(sent) == module.summary()
    assert client.task_info(json.loads(json.dumps(task.to_dict()))) == task
    assert client.task_page(json.loads(json.dumps(page.to_dict()))) == page


def test_a_folder_is_packed_with_the_files_a_registration_uses(tmp_path: Path) -> None:
    folder = tmp_path / "module"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "config").write_text("not sent")
    (folder / "notes.txt").write_text("not listed, not sent")
    for path in (EXAMPLES / "timeseries").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    with client.packed_folder(folder, None) as archive, zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == ["metadata.json", "requirements.txt", "timeseries.py"]


def test_packing_refuses_what_a_local_registration_refuses(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no metadata.json"), client.packed_folder(DATA, None):
        pass
    module = tmp_path / "m"
    module.mkdir()
    (module / "metadata.json").write_text("{}")
    with pytest.raises(InvalidMetadata), client.packed_folder(module, None):
        pass
