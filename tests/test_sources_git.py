from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestra.config import Settings
from orchestra.errors import InvalidInput, SourceError
from orchestra.sources import FetchedSource, SourceSpec, fetch
from orchestra.sources.git import fetch_git, is_git_location
from tests.support.gitserver import GitDaemon, git, make_repo
from tests.support.helpers import free_port


def metadata(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "description": "a test module",
            "args": [],
            "output": {"type": "timeseries"},
            "install": {"executable": "Model.main", "files": ["Model"]},
        }
    )


@dataclass(frozen=True)
class History:
    """A served repository: first commit tagged v1, main one commit later, dev beside it."""

    path: Path
    url: str
    first: str
    main: str
    dev: str


@pytest.fixture(scope="module")
def history(git_daemon: GitDaemon) -> History:
    path = git_daemon.new_repo(
        {
            "metadata.json": metadata("first"),
            "Model/main.py": "print('first')\n",
            "sub/metadata.json": metadata("sub-first"),
        }
    )
    first = git(path, "rev-parse", "HEAD")
    git(path, "tag", "-a", "v1", "-m", "version 1")
    git(path, "tag", "light", first)
    main = make_repo(path, {"metadata.json": metadata("main")})
    dev = make_repo(path, {"metadata.json": metadata("dev")}, branch="dev")
    git(path, "checkout", "--quiet", "main")
    return History(path, git_daemon.url(path.name), first, main, dev)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def clone(spec: SourceSpec, workdir: Path, settings: Settings) -> FetchedSource:
    return fetch_git(spec, workdir, settings)


def module_name(fetched: FetchedSource) -> str:
    return str(json.loads((fetched.root / "metadata.json").read_text())["name"])


def test_a_clone_without_ref_takes_the_default_branch(
    history: History, workdir: Path, settings: Settings
) -> None:
    fetched = clone(SourceSpec(history.url), workdir, settings)
    assert (fetched.kind, fetched.commit) == ("git", history.main)
    assert module_name(fetched) == "main"
    assert (fetched.root / "Model" / "main.py").is_file()


def test_a_branch_is_cloned_at_its_tip(history: History, workdir: Path, settings: Settings) -> None:
    fetched = clone(SourceSpec(history.url, ref="dev"), workdir, settings)
    assert fetched.commit == history.dev
    assert module_name(fetched) == "dev"


@pytest.mark.parametrize("tag", ["v1", "light", "refs/tags/v1"])
def test_a_tag_resolves_to_the_commit_it_names(
    tag: str, history: History, workdir: Path, settings: Settings
) -> None:
    fetched = clone(SourceSpec(history.url, ref=tag), workdir, settings)
    assert fetched.commit == history.first
    assert module_name(fetched) == "first"


@pytest.mark.parametrize("length", [40, 12, 7])
def test_a_commit_given_in_full_or_abbreviated_is_checked_out(
    length: int, history: History, workdir: Path, settings: Settings
) -> None:
    fetched = clone(SourceSpec(history.url, ref=history.first[:length]), workdir, settings)
    assert fetched.commit == history.first
    assert module_name(fetched) == "first"


def test_an_abbreviated_branch_tip_is_fetched_alone(
    history: History, workdir: Path, settings: Settings
) -> None:
    fetched = clone(SourceSpec(history.url, ref=history.dev[:8]), workdir, settings)
    assert fetched.commit == history.dev


def test_a_subdir_becomes_the_module_root(
    history: History, workdir: Path, settings: Settings
) -> None:
    fetched = clone(SourceSpec(history.url, ref="v1", subdir="sub"), workdir, settings)
    assert fetched.root == (workdir / "repo" / "sub").resolve()
    assert module_name(fetched) == "sub-first"
    assert fetched.commit == history.first


def test_the_clone_keeps_no_git_folder(history: History, workdir: Path, settings: Settings) -> None:
    fetched = clone(SourceSpec(history.url), workdir, settings)
    assert not (fetched.root / ".git").exists()


def test_progress_names_the_url_and_ref_then_relays_git(
    history: History, workdir: Path, settings: Settings
) -> None:
    lines: list[str] = []
    fetch_git(SourceSpec(history.url, ref="dev"), workdir, settings, progress=lines.append)
    assert lines[0] == f"cloning {history.url} at dev"
    assert len(lines) > 1
    assert all(line == line.strip() and line for line in lines)


@pytest.mark.parametrize("ref", [None, "dev", "first"])
def test_a_file_url_is_cloned_like_a_served_one(
    ref: str | None, history: History, workdir: Path, settings: Settings
) -> None:
    wanted = {None: history.main, "dev": history.dev, "first": history.first}[ref]
    spec = SourceSpec(history.path.as_uri(), ref=history.first if ref == "first" else ref)
    fetched = clone(spec, workdir, settings)
    assert fetched.commit == wanted


def test_a_local_checkout_with_a_ref_is_cloned_at_that_ref(
    history: History, workdir: Path, settings: Settings
) -> None:
    fetched = fetch(SourceSpec(str(history.path), ref="v1", subdir="sub"), workdir, settings)
    assert (fetched.kind, fetched.commit) == ("git", history.first)
    assert module_name(fetched) == "sub-first"
    assert workdir in fetched.root.parents


def test_submodules_are_not_fetched(
    git_daemon: GitDaemon, tmp_path: Path, workdir: Path, settings: Settings
) -> None:
    make_repo(tmp_path / "inner", {"secret.txt": "inner\n"})
    outer = git_daemon.new_repo({"metadata.json": metadata("outer")})
    inner = str(tmp_path / "inner")
    git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", inner, "dep")
    make_repo(outer, {})
    git(outer, "-c", "protocol.file.allow=always", "submodule", "update", "--init")
    fetched = clone(SourceSpec(git_daemon.url(outer.name)), workdir, settings)
    assert (fetched.root / ".gitmodules").is_file()
    assert not (fetched.root / "dep" / "secret.txt").exists()


# --- locations that must never reach git --------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "https://example.org/repo.git",
        "http://127.0.0.1/repo",
        "ssh://git@example.org/repo.git",
        "git://127.0.0.1/repo",
        "file:///srv/repo",
        "git@example.org:team/repo.git",
        "deploy@[::1]:repo",
        "example.org:team/repo.git",
        "gitlab-mirror:modules/catalog",
    ],
)
def test_the_spec_transports_are_git_locations(location: str) -> None:
    assert is_git_location(location) is True


@pytest.mark.parametrize("location", ["/srv/modules/a", "relative/dir", "./odd:name", "."])
def test_plain_paths_are_not_git_locations(location: str) -> None:
    assert is_git_location(location) is False


@pytest.mark.parametrize(
    "location",
    [
        "ext::sh -c touch% /tmp/x",
        "fd::17",
        "file::/srv/repo",
        "ftp://example.org/repo",
        "javascript:alert(1)",
        "host:repo with space",
        "--upload-pack=touch /tmp/x",
        "-uhi",
        "ssh://-oProxyCommand=touch%20x/repo",
        "git@-oProxyCommand=x:repo",
        "https://example.org/repo\n",
        "git://127.0.0.1/re\x00po",
    ],
)
def test_dangerous_or_unknown_locations_are_refused(location: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        is_git_location(location)
    assert caught.value.key == "source"


def test_an_ext_url_runs_nothing(tmp_path: Path, workdir: Path, settings: Settings) -> None:
    marker = tmp_path / "pwned"
    spec = SourceSpec(f"ext::sh -c touch% {marker}", ref="main")
    with pytest.raises(InvalidInput):
        fetch(spec, workdir, settings)
    assert not marker.exists()
    assert list(workdir.iterdir()) == []


def test_an_upload_pack_option_as_url_runs_nothing(
    tmp_path: Path, workdir: Path, settings: Settings
) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(InvalidInput):
        fetch(SourceSpec(f"--upload-pack=touch {marker}"), workdir, settings)
    assert not marker.exists()


@pytest.mark.parametrize("ref", ["--upload-pack=touch {marker}", "-c", "a b", "x\ny", "v1:x"])
def test_a_ref_that_git_could_read_as_an_option_runs_nothing(
    ref: str, history: History, tmp_path: Path, workdir: Path, settings: Settings
) -> None:
    marker = tmp_path / "pwned"
    spec = SourceSpec(history.path.as_uri(), ref=ref.format(marker=marker))
    with pytest.raises(InvalidInput) as caught:
        fetch_git(spec, workdir, settings)
    assert caught.value.key == "ref"
    assert not marker.exists()
    assert list(workdir.iterdir()) == []


def test_a_missing_repository_is_a_source_error_naming_it(
    git_daemon: GitDaemon, workdir: Path, settings: Settings
) -> None:
    url = git_daemon.url("no-such-repo")
    with pytest.raises(SourceError, match="no-such-repo"):
        clone(SourceSpec(url), workdir, settings)


def test_a_missing_local_repository_is_a_source_error(
    tmp_path: Path, workdir: Path, settings: Settings
) -> None:
    with pytest.raises(SourceError, match="missing"):
        clone(SourceSpec((tmp_path / "missing").as_uri()), workdir, settings)


@pytest.mark.parametrize("ref", ["no-such-branch", "deadbeef", "0" * 40])
def test_a_missing_ref_is_a_source_error_naming_it(
    ref: str, history: History, workdir: Path, settings: Settings
) -> None:
    with pytest.raises(SourceError, match=ref) as caught:
        clone(SourceSpec(history.url, ref=ref), workdir, settings)
    assert caught.value.key == "ref"


def test_a_missing_subdir_is_a_source_error_naming_it(
    history: History, workdir: Path, settings: Settings
) -> None:
    with pytest.raises(SourceError, match="nowhere") as caught:
        clone(SourceSpec(history.url, subdir="nowhere"), workdir, settings)
    assert caught.value.key == "subdir"


@pytest.mark.parametrize("subdir", ["../x", "/etc", "sub/../../x"])
def test_a_subdir_that_escapes_the_clone_is_refused(
    subdir: str, history: History, workdir: Path, settings: Settings
) -> None:
    with pytest.raises(InvalidInput) as caught:
        clone(SourceSpec(history.url, subdir=subdir), workdir, settings)
    assert caught.value.key == "subdir"


def test_a_subdir_link_leading_out_of_the_clone_is_refused(
    git_daemon: GitDaemon, workdir: Path, settings: Settings
) -> None:
    path = git_daemon.new_repo({"metadata.json": metadata("links")})
    (path / "out").symlink_to("/etc")
    make_repo(path, {})
    with pytest.raises(InvalidInput, match="outside"):
        clone(SourceSpec(git_daemon.url(path.name), subdir="out"), workdir, settings)


def test_a_repository_without_metadata_is_a_source_error(
    git_daemon: GitDaemon, workdir: Path, settings: Settings
) -> None:
    path = git_daemon.new_repo({"README.md": "nothing here\n"})
    with pytest.raises(SourceError, match="metadata.json"):
        clone(SourceSpec(git_daemon.url(path.name)), workdir, settings)


# --- bounded time ---------------------------------------------------------------------------


def test_a_closed_port_fails_quickly(workdir: Path, settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot read"):
        clone(SourceSpec(f"git://127.0.0.1:{free_port()}/repo"), workdir, settings)
    assert time.monotonic() - started < 20


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_a_server_that_never_answers_fails_within_the_git_timeout(
    scheme: str, silent_server: int, workdir: Path, settings: Settings
) -> None:
    settings = settings.with_overrides(git_timeout=2)
    started = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        clone(SourceSpec(f"{scheme}://127.0.0.1:{silent_server}/repo"), workdir, settings)
    assert time.monotonic() - started < 15


def test_a_password_in_the_url_never_appears_in_messages(workdir: Path, settings: Settings) -> None:
    lines: list[str] = []
    url = f"http://user:s3cret@127.0.0.1:{free_port()}/repo"
    with pytest.raises(SourceError) as caught:
        fetch_git(SourceSpec(url), workdir, settings, progress=lines.append)
    assert "s3cret" not in caught.value.message
    assert "127.0.0.1" in caught.value.message
    assert not any("s3cret" in line for line in lines)


# --- a plain static web server (git's "dumb" http) -------------------------------------------


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An ordinary static file server (http.server) on 127.0.0.1, serving ``tmp_path/www``."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_repository_on_a_plain_static_web_server_is_cloned_at_a_tag(
    static_server: tuple[str, Path], tmp_path: Path, workdir: Path, settings: Settings
) -> None:
    base_url, root = static_server
    work = tmp_path / "src"
    tagged = make_repo(work, {"metadata.json": metadata("tagged"), "Model/main.py": "x = 1\n"})
    git(work, "tag", "-a", "v1.0", "-m", "the release")
    make_repo(work, {"metadata.json": metadata("later")})
    git(root, "clone", "--quiet", "--bare", str(work), "module.git")
    git(root / "module.git", "update-server-info")  # what a dumb http client reads
    url = f"{base_url}/module.git"
    fetched = clone(SourceSpec(url, ref="v1.0"), workdir, settings)
    assert (fetched.commit, module_name(fetched)) == (tagged, "tagged")
    latest = clone(SourceSpec(url), workdir / "again", settings)
    assert module_name(latest) == "later"


def test_a_refused_shallow_clone_is_reported_when_the_full_clone_fails_too(
    static_server: tuple[str, Path], workdir: Path, settings: Settings
) -> None:
    base_url, root = static_server
    (root / "broken.git" / "info").mkdir(parents=True)
    sha = "1" * 40
    (root / "broken.git" / "info" / "refs").write_text(f"{sha}\trefs/heads/main\n")
    (root / "broken.git" / "HEAD").write_text("ref: refs/heads/main\n")
    with pytest.raises(SourceError, match="cannot clone"):
        clone(SourceSpec(f"{base_url}/broken.git"), workdir, settings)
