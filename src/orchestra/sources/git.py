"""A module in a git repository: refuse locations git would act on, clone at a ref safely.

git runs commands that a URL or an option names (``ext::`` transports, ``--upload-pack``), and
hooks or configuration found in a repository. So: only the transports the spec lists reach
git, each clone allows only the transport its URL needs, ``--`` separates options from the
URL, hooks and submodules are off, and every step shares one time budget.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orchestra.errors import InstallError, InvalidInput, SourceError
from orchestra.process import clean_env, run_checked, tail
from orchestra.sources import FetchedSource, Progress, SourceSpec
from orchestra.sources.folder import module_root

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)

_SCHEMES = ("https", "http", "ssh", "git", "file")
# git hands "<helper>::<address>" to git-remote-<helper> (ext:: runs a command)
_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# scp-like ssh locations: [user@]host:path (git takes a colon before any slash this way)
_SCP = re.compile(r"^([^@/:\s]+@)?(\[[^\]/]+\]|[^@/:\s\[\]]+):")
# without a user, only what a host name and a repository path look like (not "javascript:x()")
_BARE_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:[A-Za-z0-9._~+-][A-Za-z0-9._~/+@-]*\Z")
# what git says when a server cannot serve a shallow clone (dumb http, some old servers)
_NO_SHALLOW = re.compile(r"shallow", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-fA-F]{4,64}$")
_FULL_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_LOW_SPEED = ("-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30")


def is_git_location(location: str) -> bool:
    """True for a git URL, False for a local path; InvalidInput for what must not reach git."""
    if any(c in location for c in "\x00\n\r"):
        raise InvalidInput("source: must not contain NUL or line-break characters", key="source")
    if location.startswith("-"):
        raise InvalidInput(f"source: {location!r} must not start with '-'", key="source")
    return _transport(location) is not None


def _transport(location: str) -> str | None:
    """The transport git would use for ``location``; None for a local path."""
    scheme = _SCHEME.match(location)
    if scheme:
        name = scheme.group(1).lower()
        if name not in _SCHEMES:
            raise InvalidInput(
                f"source: scheme {name!r} is not supported (use {', '.join(_SCHEMES)})",
                key="source",
            )
        _check_host(location)
        return name
    helper = _HELPER.match(location)
    if helper:
        raise InvalidInput(f"source: transport {helper.group(0)!r} is not supported", key="source")
    scp = _SCP.match(location)
    if scp and (scp.group(1) or _BARE_HOST.match(location)):
        _check_host("ssh://" + scp.group(0)[:-1])
        return "ssh"
    if ":" in location.split("/", 1)[0]:
        raise InvalidInput(
            f"source: {location!r} is neither a supported URL nor [user@]host:path", key="source"
        )
    return None


def _check_host(url: str) -> None:
    # ssh would read a host or user starting with '-' as an option (-oProxyCommand=...)
    try:
        parts = urlsplit(url)
        names = (parts.hostname, parts.username)
    except ValueError as exc:
        raise InvalidInput(f"source: {url!r} is not a valid URL ({exc})", key="source") from exc
    for value in names:
        if value and value.startswith("-"):
            raise InvalidInput(f"source: {value!r} must not start with '-'", key="source")


def check_ref(ref: str | None) -> str | None:
    """The ref unchanged; InvalidInput when git could read it as an option or it is malformed."""
    if ref is None:
        return None
    if not ref or ref.startswith("-") or len(ref) > 255:
        raise InvalidInput(f"ref: {ref[:100]!r} is not a valid branch, tag or commit", key="ref")
    if any(ord(c) < 32 or c in " ~^:?*[\\\x7f" for c in ref):
        raise InvalidInput(f"ref: {ref[:100]!r} is not a valid branch, tag or commit", key="ref")
    return ref


@dataclass(frozen=True)
class _Git:
    """One fetch: the remote, the options and environment every git call gets, the deadline."""

    url: str
    shown: str
    options: tuple[str, ...]
    env: dict[str, str]
    deadline: float
    progress: Progress | None

    def run(self, *args: str, step: str, report: bool = False) -> str:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise InstallError(step, "timed out")
        done = run_checked(
            ["git", *self.options, *args],
            step=step,
            env=self.env,
            timeout=remaining,
            on_line=self._report if report else None,
        )
        return done.output

    def _report(self, line: str) -> None:
        # git pads its progress lines with spaces to overwrite the previous one
        text = line.strip().replace(self.url, self.shown)
        if text and self.progress:
            self.progress(text)


def fetch_git(
    spec: SourceSpec, workdir: Path, settings: Settings, *, progress: Progress | None = None
) -> FetchedSource:
    """Clone ``spec`` into ``workdir`` at its ref; the root is the clone or its subdir."""
    ref = check_ref(spec.ref)
    git = _session(spec.location, settings, progress)
    if progress:
        progress(f"cloning {git.shown} at {ref or 'its default branch'}")
    refs = _list_refs(git)
    repo = workdir / "repo"
    commit = _checkout(git, repo, ref, refs)
    committed = _git_in(git, repo, "log", "-1", "--format=%cI", commit, "--").strip()
    # the module is plain files from here on; nothing may run git inside it again
    shutil.rmtree(repo / ".git", ignore_errors=True)
    root = module_root(repo, spec.subdir, where=f"{git.shown} at {commit[:12]}")
    return FetchedSource(root=root, kind="git", commit=commit, committed=committed or None)


def _session(location: str, settings: Settings, progress: Progress | None) -> _Git:
    transport = _transport(location) if is_git_location(location) else None
    if transport is None:
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise SourceError(f"source folder not found: {location!r}", key="source")
        url, transport = str(folder.resolve()), "file"
    else:
        url = location
    connect = max(1, min(30, int(settings.git_timeout)))
    options = (
        "-c", "protocol.allow=never", "-c", f"protocol.{transport}.allow=always",
        "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
        "-c", "submodule.recurse=false", "-c", "advice.detachedHead=false",
        "-c", "init.defaultBranch=main", *_LOW_SPEED,
    )  # fmt: skip
    env = clean_env(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ALLOW_PROTOCOL": transport,
            # the operator's ssh: ~/.ssh (keys, config, known_hosts) through HOME, the agent
            # through SSH_AUTH_SOCK; never a prompt, and an unknown host key is refused
            "GIT_SSH_COMMAND": f"ssh -o BatchMode=yes -o ConnectTimeout={connect}",
            **_ssh_agent(transport),
        }
    )
    deadline = time.monotonic() + settings.git_timeout
    return _Git(url, _redact(url), options, env, deadline, progress)


def _ssh_agent(transport: str) -> dict[str, str]:
    """The operator's ssh agent socket, for ssh sources only."""
    socket = os.environ.get("SSH_AUTH_SOCK")
    return {"SSH_AUTH_SOCK": socket} if transport == "ssh" and socket else {}


def _redact(url: str) -> str:
    """The URL without the user part of an http(s) URL (a password or token), for messages."""
    return re.sub(r"^(https?://)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)


def _failure(git: _Git, exc: InstallError, what: str, key: str = "source") -> SourceError:
    reason = exc.message.split(": ", 1)[-1] if "timed out" in exc.message else tail(exc.log, 5)
    reason = reason.replace(git.url, git.shown) or exc.message
    return SourceError(f"{what} {git.shown}: {reason}", key=key)


def _list_refs(git: _Git) -> dict[str, str]:
    """The remote's refs (name -> sha); also tells early that the repository is there."""
    try:
        output = git.run("ls-remote", "--", git.url, step="clone")
    except InstallError as exc:
        raise _failure(git, exc, "cannot read the git repository") from exc
    refs = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if name and _FULL_SHA.match(sha):
            refs[name] = sha
    return refs


def _checkout(git: _Git, repo: Path, ref: str | None, refs: dict[str, str]) -> str:
    """Get the work tree for ``ref`` into ``repo``; return the full commit sha."""
    name = _named_ref(ref, refs)
    if ref is None or name:
        _clone_shallow(git, repo, name)
    elif _COMMIT.match(ref):
        _clone_commit(git, repo, ref.lower(), refs)
    else:
        raise SourceError(f"ref {ref!r} not found in {git.shown}", key="ref")
    commit = _rev_parse(git, repo, "HEAD")
    if commit is None or (ref and name is None and not commit.startswith(ref.lower())):
        raise SourceError(f"ref {ref!r} not found in {git.shown}", key="ref")
    return commit


def _named_ref(ref: str | None, refs: dict[str, str]) -> str | None:
    """The short branch or tag name ``ref`` stands for, or None."""
    if ref is None or ref == "HEAD":
        return None
    for prefix in ("refs/heads/", "refs/tags/"):
        if prefix + ref in refs:
            return ref
        if ref.startswith(prefix) and ref in refs:
            return ref[len(prefix) :]
    return None


def _clone_shallow(git: _Git, repo: Path, branch: str | None) -> None:
    """Clone one commit deep where the server allows it, else the whole history."""
    pick = ["--branch", branch] if branch else []
    try:
        _clone(git, repo, "--depth", "1", *pick)
        return
    except InstallError as exc:
        # a dumb http server (plain static files) or an old one cannot serve a shallow clone
        if not _NO_SHALLOW.search(exc.log or exc.message):
            raise _failure(git, exc, "cannot clone") from exc
        _LOGGER.info("%s refuses a shallow clone; cloning its whole history", git.shown)
    shutil.rmtree(repo, ignore_errors=True)
    try:
        _clone(git, repo, *pick)
    except InstallError as exc:
        raise _failure(git, exc, "cannot clone") from exc


def _clone(git: _Git, repo: Path, *options: str) -> None:
    git.run(
        "clone", *options, "--no-local", "--no-recurse-submodules", "--progress",
        "--", git.url, str(repo), step="clone", report=True,
    )  # fmt: skip


def _clone_commit(git: _Git, repo: Path, prefix: str, refs: dict[str, str]) -> None:
    """Fetch just that commit when the server allows it, else clone everything and pick it."""
    full = _full_sha(prefix, refs)
    if full and _fetch_one(git, repo, full):
        return
    shutil.rmtree(repo, ignore_errors=True)
    try:
        _clone(git, repo, "--no-checkout")
    except InstallError as exc:
        raise _failure(git, exc, "cannot clone") from exc
    commit = _rev_parse(git, repo, prefix)
    if commit is None:
        raise SourceError(f"ref {prefix!r} not found in {git.shown}", key="ref")
    _git_in(git, repo, "checkout", "--detach", "--quiet", commit, "--")


def _full_sha(prefix: str, refs: dict[str, str]) -> str | None:
    """``prefix`` when it is a full sha, else the one advertised commit starting with it."""
    if _FULL_SHA.match(prefix):
        return prefix
    matches = {sha for sha in refs.values() if sha.startswith(prefix)}
    return matches.pop() if len(matches) == 1 else None


def _fetch_one(git: _Git, repo: Path, sha: str) -> bool:
    """Fetch one commit into a new repository; False when the server refuses to serve it."""
    try:
        git.run("init", "--quiet", str(repo), step="clone")
        git.run(
            "-C", str(repo), "fetch", "--depth", "1", "--no-recurse-submodules", "--progress",
            "--", git.url, sha, step="clone", report=True,
        )  # fmt: skip
    except InstallError as exc:
        _LOGGER.info("fetching commit %s alone failed, cloning everything: %s", sha, exc.message)
        return False
    _git_in(git, repo, "checkout", "--detach", "--quiet", "FETCH_HEAD", "--")
    return True


def _rev_parse(git: _Git, repo: Path, name: str) -> str | None:
    try:
        output = _git_in(git, repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    except SourceError:
        return None
    lines = output.split()
    return lines[-1] if lines and _FULL_SHA.match(lines[-1]) else None


def _git_in(git: _Git, repo: Path, *args: str) -> str:
    """A local git command in the fresh clone (our own .git, so no foreign hooks or config)."""
    try:
        return git.run("-C", str(repo), *args, step="clone")
    except InstallError as exc:
        raise _failure(git, exc, "cannot check out") from exc
