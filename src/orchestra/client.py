"""A remote server's REST API behind the methods the command line calls on Service.

The command line picks this client or a local Service in one place (``--url`` or
``ORCHESTRA_URL``); both return the same records, and the server's error answers become the
same OrchestraError subclasses, so every command prints and exits alike either way.
The standard library's ``http.client`` keeps the command's start-up as fast as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from orchestra.errors import (
    InstallError,
    InvalidInput,
    InvalidMetadata,
    NotFound,
    OrchestraError,
    SourceError,
    Unreachable,
    WrongState,
)
from orchestra.manifest import check_choices
from orchestra.models.store import zip_digest
from orchestra.records import (
    Aliases,
    AliasMove,
    AuditEntry,
    AuditPage,
    ModelVersion,
    ModuleInfo,
    ModuleSummary,
    NewToken,
    OutputFile,
    Pruned,
    TaskInfo,
    TaskPage,
    TokenInfo,
)

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]
TIMEOUT = 60.0  # seconds an answer may take, on top of any ?wait= the request asks for
POLL_INTERVAL = 0.5  # seconds between looks at a module that installs on the server
PROGRESS_EVERY = 10.0  # seconds between "still installing" notes
_CHUNK = 256 * 1024  # bytes sent or received at a time
_UPDATE_FAILED = "update failed: "  # how the server records a failed update of a serving module
_BUSY = frozenset({"installing", "updating"})  # module states that end by themselves
USER_HEADER = "X-Orchestra-User"  # the end user the command acts for
_STEP_FAILED = re.compile(r"(?P<step>[\w][\w .-]{0,40}?) failed: (?P<rest>.*)", re.DOTALL)


# -- the connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    """Where the server is: scheme, host, port and the path prefix it is served under."""

    url: str
    scheme: str
    host: str
    port: int | None
    prefix: str


def parse_url(url: str) -> _Endpoint:
    """A server URL (``http://host:port[/prefix]``); InvalidInput naming what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url: {url[:200]!r} is not a valid URL ({exc})", key="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"url: {url[:200]!r} is not a server address (expected http://HOST[:PORT])", key="url"
        )
    if parts.query or parts.fragment or parts.username:
        raise InvalidInput(f"url: {url[:200]!r} must not hold a query, fragment or user", key="url")
    shown = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return _Endpoint(shown, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


class _Connection:
    """One kept-alive HTTP connection, opened again when the server has closed it."""

    def __init__(self, endpoint: _Endpoint, token: str, user: str | None = None) -> None:
        self.endpoint = endpoint
        self._token = token
        self._user = user
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection if one is open."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> http.client.HTTPResponse:
        """Send one request; the answer's body is left for the caller to read."""
        sent = {"Accept": "application/json", **(headers or {})}
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        if self._user:
            sent[USER_HEADER] = self._user
        target = self.endpoint.prefix + path
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._open(timeout)
            try:
                return _exchange(conn, method, target, body, sent)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                # a kept-alive connection the server closed while idle: the request never
                # reached it, so sending it again is safe (a fresh connection is not retried)
                if not reused or attempt == 2 or not isinstance(body, bytes | None):
                    raise Unreachable(f"{self.endpoint.url} closed the connection") from None
            except OSError as exc:
                self.close()
                raise _unreachable(self.endpoint.url, exc, timeout) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            ep = self.endpoint
            if ep.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    ep.host, ep.port, timeout=timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | Iterator[bytes] | None,
    headers: Mapping[str, str],
) -> http.client.HTTPResponse:
    try:
        conn.request(method, target, body=body, headers=dict(headers))
    except (BrokenPipeError, ConnectionResetError) as exc:
        # a server refusing a body (too large) answers first, then closes while it is sent
        try:
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            raise exc from None
    return conn.getresponse()


def _unreachable(url: str, exc: OSError, timeout: float) -> Unreachable:
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused (is `orchestra serve` running there?)"
    elif isinstance(exc, socket.gaierror):
        why = "unknown host"
    elif isinstance(exc, TimeoutError):
        why = f"no answer within {timeout:g} s"
    elif isinstance(exc, ssl.SSLError):
        why = f"TLS failed ({exc.reason or exc})"
    else:
        why = exc.strerror or str(exc) or type(exc).__name__
    return Unreachable(f"cannot reach {url}: {why}")


# -- errors --------------------------------------------------------------------------------


def _kinds_by_status() -> dict[int, type[OrchestraError]]:
    """Each HTTP status to the first error kind of the family that answers with it."""
    # several kinds share 400 (bad input, a source, an install): the first, InvalidInput,
    # stands for the status; the others are told apart by their answer's body below
    kinds: dict[int, type[OrchestraError]] = {}
    for kind in OrchestraError.__subclasses__():
        kinds.setdefault(kind.http_status, kind)
    return kinds


_BY_STATUS = _kinds_by_status()


def error_from_answer(status: int, reason: str, body: bytes) -> OrchestraError:
    """The OrchestraError a local Service would have raised for this error answer."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        # not one of Orchestra's answers (a proxy, the WSGI server): its status says enough
        error = _BY_STATUS.get(status, OrchestraError)(
            f"the server answered {status} {reason}".rstrip()
        )
        error.http_status = status
        return error
    message, key = data["error"], data.get("key")
    if isinstance(data.get("problems"), list):
        return InvalidMetadata([str(p) for p in data["problems"]])
    if isinstance(data.get("step"), str):
        return _install_error(message, str(data.get("log") or ""))
    if status == 401:
        message += " (set ORCHESTRA_API_TOKEN)"
    kind = _BY_STATUS.get(status)
    if kind is None:
        error = OrchestraError(message, key=key if isinstance(key, str) else None)
        error.http_status = status
        return error
    return kind(message, key=key if isinstance(key, str) else None)


def _install_error(message: str, log: str) -> OrchestraError:
    # InstallError prefixes "<step> failed: " itself; split it off to print the same line
    match = _STEP_FAILED.fullmatch(message)
    if match is None:
        return OrchestraError(message)
    return InstallError(match["step"], match["rest"], log=log)


def _failed_install(module: ModuleInfo) -> OrchestraError:
    # the server keeps only the message of a background failure; its opening words tell
    # which error a local registration would have raised, and so its exit code
    message = module.error or f"module {module.id}: installation failed"
    for opening, kind in _FAILURE_KINDS:
        if message.startswith(opening):
            return kind(message)
    return _install_error(message, module.install_log)


_FAILURE_KINDS: tuple[tuple[str, type[OrchestraError]], ...] = (
    ("invalid metadata.json: ", InvalidInput),
    ("install.", InvalidInput),
    ("a module named ", WrongState),
    ("source folder not found", SourceError),
    ("no metadata.json", SourceError),
    ("subdir ", SourceError),
    ("ref ", SourceError),
)


# -- records -------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.removesuffix("Z"))


R = TypeVar("R")


def _record(cls: type[R], data: Mapping[str, Any], **items: Callable[[Any], Any]) -> R:
    """A record rebuilt field by field from its JSON form (``items`` rebuild list members).

    Built by name from the record's own fields, so a field added to a record travels
    without a change here; a field the server does not send keeps its default.
    """
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name not in data and spec.default is not dataclasses.MISSING:
            continue
        value = data.get(spec.name)
        if "datetime" in str(spec.type):
            value = _time(value)
        elif isinstance(value, list) and str(spec.type).startswith("tuple"):
            value = tuple(map(items.get(spec.name, _same), value))
        values[spec.name] = value
    return cls(**values)


def _same(value: Any) -> Any:
    return value


def module_summary(data: Mapping[str, Any]) -> ModuleSummary:
    """A ModuleSummary from its JSON form."""
    return _record(ModuleSummary, data)


def module_info(data: Mapping[str, Any]) -> ModuleInfo:
    """A ModuleInfo from its JSON form (the metadata travels whole under ``metadata``)."""
    return _record(ModuleInfo, data)


def task_info(data: Mapping[str, Any]) -> TaskInfo:
    """A TaskInfo from its JSON form."""
    return _record(TaskInfo, data, output=lambda item: _record(OutputFile, item))


def task_page(data: Mapping[str, Any]) -> TaskPage:
    """A TaskPage from its JSON form."""
    return _record(TaskPage, data, tasks=task_info)


# -- the client ----------------------------------------------------------------------------


class _Remote:
    """Calls to a server's REST API over one kept connection: the plumbing every part shares."""

    def __init__(self, url: str, http: _Connection) -> None:
        self.url, self._http = url, http

    def _answer(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> http.client.HTTPResponse:
        """A successful answer, body unread; an error answer raised as its OrchestraError."""
        shown = {k: v for k, v in (query or {}).items() if v is not None}
        target = path + ("?" + urlencode(shown) if shown else "")
        response = self._http.send(method, target, body=body, headers=headers, timeout=timeout)
        if response.status >= 400:
            raise error_from_answer(response.status, response.reason, _read(response))
        return response

    def _json(self, method: str, path: str, *, payload: Any = None, **options: Any) -> Any:
        """The decoded JSON answer (None for an empty one)."""
        if payload is not None:
            options["body"] = json.dumps(payload).encode()
            options["headers"] = {"Content-Type": "application/json"}
        raw = _read(self._answer(method, path, **options))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise OrchestraError(f"{self.url}{path}: the answer is not JSON") from None

    def open_output(self, task_id: int, name: str) -> http.client.HTTPResponse:
        """One output file's bytes as they arrive."""
        path = f"/task/{task_id}/output/{quote(name)}"
        return self._answer("GET", path, headers={"Accept": "*/*"})


class Client(_Remote):
    """The service's calls, answered by a server's REST API: modules and tasks here, tokens
    and the audit log in ``RemoteAccess``, trainings and versions in ``RemoteModels``."""

    def __init__(self, url: str, *, token: str = "", user: str | None = None) -> None:
        endpoint = parse_url(url)
        super().__init__(endpoint.url, _Connection(endpoint, token, user))
        self.access = access = RemoteAccess(self.url, self._http)
        self.models = models = RemoteModels(self.url, self._http, self.get_task)
        self.create_token = access.create_token
        self.list_tokens = access.list_tokens
        self.revoke_token = access.revoke_token
        self.audit_log = access.audit_log
        self.train = models.train
        self.list_models = models.list_models
        self.get_model = models.get_model
        self.download_model = models.download_model
        self.aliases = models.aliases
        self.move_alias = models.move_alias
        self.remove_alias = models.remove_alias

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    # -- modules --------------------------------------------------------------------------

    def register(
        self,
        source: str,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        staged: bool = False,
        progress: Progress | None = None,
        as_of: str | None = None,
        python: str | None = None,
    ) -> ModuleInfo:
        """Register on the server; a local folder or zip is uploaded. Returns when installed."""
        report = progress or _LOGGER.info
        check_choices(as_of, python)
        given = {"as_of": as_of, "python_version": python}
        choices = {key: value for key, value in given.items() if value}
        accepted = self._submit(source, ref, subdir, report, staged, choices)
        return self._await_install(int(accepted["id"]), report)

    def _submit(
        self, source: str, ref: str | None, subdir: str | None, report: Progress, staged: bool,
        choices: dict[str, str],
    ) -> dict[str, Any]:  # fmt: skip
        from orchestra.sources.git import is_git_location

        local = Path(source).expanduser()
        if (local.is_dir() or local.is_file()) and ref:
            raise InvalidInput(
                f"ref: {source} is uploaded as it is; to register a ref, give a git URL "
                "that the server can reach",
                key="ref",
            )
        if local.is_dir():
            with packed_folder(local, subdir) as archive:
                return self._upload(archive, None, report, staged, fields=choices)
        if local.is_file():
            return self._upload(local, subdir, report, staged, fields=choices)
        if not source or not is_git_location(source):
            raise SourceError(f"source folder not found: {source!r}", key="source")
        report(f"asking {self.url} to register {source}")
        payload = {"source": source, "ref": ref, "subdir": subdir, "staged": staged, **choices}
        return self._json("POST", "/modules", payload={k: v for k, v in payload.items() if v})  # type: ignore[no-any-return]

    def _upload(
        self, archive: Path, subdir: str | None, report: Progress, staged: bool = False,
        path: str = "/modules", fields: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        size = archive.stat().st_size
        report(f"uploading {archive.name} ({size} bytes) to {self.url}")
        fields = dict(fields or {})
        if subdir:
            fields["subdir"] = subdir
        if staged:
            fields["staged"] = "1"
        form = _Multipart(fields, archive)
        return self._json("POST", path, body=form.chunks(), headers=form.headers())  # type: ignore[no-any-return]

    def _await_install(self, module_id: int, report: Progress) -> ModuleInfo:
        """Poll the module until it leaves ``installing``; a failure leaves no record behind."""
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY
        report(f"module {module_id}: installing on the server")
        module = self.get_module(module_id)
        while module.status in _BUSY:
            if time.monotonic() >= next_note:
                report(f"module {module_id}: still installing ({time.monotonic() - started:.0f} s)")
                next_note += PROGRESS_EVERY
            time.sleep(POLL_INTERVAL)
            module = self.get_module(module_id)
        if module.status == "error":
            # a local registration that fails leaves no module; neither does this one
            with contextlib.suppress(OrchestraError):
                self._answer("DELETE", f"/module/{module_id}").read()
            raise _failed_install(module)
        return module

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Re-install a module from its recorded source or a zip on the server; when done."""
        report = progress or _LOGGER.info
        before = self.get_module(module_id)
        path = f"/module/{module_id}/update"
        try:
            if archive is not None:
                self._upload(archive, None, report, path=path)
            else:
                self._json("POST", path, payload={"ref": ref} if ref else {})
        except NotFound:
            raise WrongState(
                f"{self.url} does not offer updates (POST /module/<id>/update)"
            ) from None
        started, module = time.monotonic(), self.get_module(module_id)
        while module.status in _BUSY or (
            module.updated == before.updated and module.status != "error"
        ):
            if time.monotonic() - started > PROGRESS_EVERY:
                report(f"module {module_id}: still updating")
                started = time.monotonic()
            time.sleep(POLL_INTERVAL)
            module = self.get_module(module_id)
        if module.status == "error" or (module.error or "").startswith(_UPDATE_FAILED):
            # the old version still serves; the server prefixes what a local update raises
            error = (module.error or "").removeprefix(_UPDATE_FAILED)
            raise _failed_install(dataclasses.replace(module, error=error or None))
        report(f"updated {module.name} (module {module_id})")
        return module

    def publish(self, module_id: int) -> ModuleInfo:
        """Show a staged module to clients."""
        return module_info(self._json("POST", f"/module/{module_id}/publish"))

    def stage(self, module_id: int) -> ModuleInfo:
        """Hide a module from clients' list."""
        return module_info(self._json("POST", f"/module/{module_id}/stage"))

    def prune(self, older_than_days: float | None = None) -> Pruned:
        """Forget the server's ended tasks older than that (default: its retention setting)."""
        query = {"older_than": f"{older_than_days:g}"} if older_than_days is not None else None
        data = self._json("POST", "/tasks/prune", query=query)
        return Pruned(int(data["tasks"]), int(data["modules"]), float(data["older_than_days"]))

    def remove(self, module_id: int, *, force: bool = False, purge: bool = False) -> None:
        """Remove a module (``force`` kills its tasks first; ``purge`` forgets them too)."""
        query = {"force": 1 if force else None, "purge": 1 if purge else None}
        self._answer("DELETE", f"/module/{module_id}", query=query).read()

    def clear(self) -> None:
        """Remove every module and task."""
        for module in self._json("GET", "/modules", query={"all": 1}):
            query = {"force": 1, "purge": 1}
            self._answer("DELETE", f"/module/{int(module['id'])}", query=query).read()

    def list_modules(self, *, everything: bool = False) -> list[ModuleSummary]:
        """The modules the server lists; ``everything`` adds staged and removed ones."""
        query = {"all": 1} if everything else None
        return [module_summary(m) for m in self._json("GET", "/modules", query=query)]

    def get_module(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return module_info(self._json("GET", f"/module/{module_id}"))

    # -- tasks ----------------------------------------------------------------------------

    def run(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Start a task; its record as the server has it right after."""
        accepted = self._json("POST", f"/module/{module_id}/run", payload=dict(args))
        return self.get_task(int(accepted["task"]))

    def list_tasks(
        self,
        *,
        status: str | None = None,
        module: int | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
        submitted_by: str | None = None,
        user: str | None = None,
    ) -> TaskPage:
        """Tasks newest first, filtered and paginated."""
        query = {"status": status, "module": module, "limit": limit, "offset": offset,
                 "submitted_by": submitted_by, "user": user}  # fmt: skip
        return task_page(self._json("GET", "/tasks", query={**query, "cursor": cursor}))

    def get_task(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, the server answers once it is final or the time has passed."""
        query = {"wait": f"{wait:g}"} if wait else None
        return task_info(self._json("GET", f"/task/{task_id}", query=query, timeout=TIMEOUT + wait))

    def kill(self, task_id: int) -> TaskInfo:
        """Stop a task's whole process tree, or drop it from the queue."""
        return task_info(self._json("POST", f"/task/{task_id}/kill"))

    def task_log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far."""
        return dict(self._json("GET", f"/task/{task_id}/log"))

    def task_outputs(self, task_id: int) -> list[tuple[str, RemoteFile]]:
        """The output files of a done task, each opened like a local Path."""
        task = self.get_task(task_id)
        if task.status != "done" or task.output is None:
            # the server's own answer for a task without downloadable output
            self._answer("GET", f"/task/{task_id}/output").read()
        finished = task.finished or task.created
        return [(f.name, RemoteFile(self, task_id, f, finished)) for f in task.output or ()]

    def task_votable(self, task_id: int, name: str | None = None) -> tuple[str, bytes]:
        """A done task's catalog or time table as a VOTable, converted by the server."""
        path = f"/task/{task_id}/output" + (f"/{quote(name)}" if name else "")
        response = self._answer("GET", path, query={"format": "votable"}, headers={"Accept": "*/*"})
        disposition = response.getheader("Content-Disposition") or ""
        found = re.search(r'filename="([^"/]+)"', disposition)
        return (found.group(1) if found else f"task-{task_id}.xml"), _read(response)


class RemoteAccess(_Remote):
    """Tokens and the audit log on the server."""

    def create_token(self, name: str, *, role: str, expires_days: float | None = None) -> NewToken:
        """Make a token on the server; its secret is in the answer only."""
        payload = {"name": name, "role": role, "expires": expires_days}
        return _record(NewToken, self._json("POST", "/tokens", payload=payload))

    def list_tokens(self) -> list[TokenInfo]:
        """The server's tokens not revoked."""
        return [_record(TokenInfo, item) for item in self._json("GET", "/tokens")["tokens"]]

    def revoke_token(self, name: str) -> TokenInfo:
        """Revoke a token on the server."""
        listed = {token.name: token for token in self.list_tokens()}
        self._json("DELETE", f"/token/{quote(name, safe='')}")
        return listed.get(name) or TokenInfo(name, "", datetime.min, None, None)

    def audit_log(
        self,
        *,
        who: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> AuditPage:
        """The server's audit entries newest first, filtered and paginated."""
        query = {"who": who, "action": action, "limit": limit, "offset": offset,
                 "cursor": cursor, "since": since.isoformat() if since else None}  # fmt: skip
        data = self._json("GET", "/audit", query=query)
        return _record(AuditPage, data, entries=lambda item: _record(AuditEntry, item))


class RemoteModels(_Remote):
    """Trainings, model versions and aliases on the server."""

    def __init__(self, url: str, http: _Connection, get_task: Callable[[int], TaskInfo]) -> None:
        super().__init__(url, http)
        self._get_task = get_task

    def train(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Start a training task; its record as the server has it right after."""
        accepted = self._json("POST", f"/module/{module_id}/train", payload=dict(args))
        return self._get_task(int(accepted["task"]))

    def list_models(self, module_id: int) -> list[ModelVersion]:
        """A module's versions, newest first."""
        found = self._json("GET", f"/module/{module_id}/models")["models"]
        return [_record(ModelVersion, item) for item in found]

    def get_model(self, module_id: int, version: int) -> ModelVersion:
        """One version's record."""
        return _record(ModelVersion, self._json("GET", f"/module/{module_id}/model/{version}"))

    def download_model(self, module_id: int, version: int, target: Path) -> ModelVersion:
        """The version's zip saved at ``target``, its content checked against its digest."""
        record = self.get_model(module_id, version)
        answer = self._answer("GET", f"/module/{module_id}/model/{version}/download")
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(answer, out)
            with zipfile.ZipFile(tmp) as archive:
                if zip_digest(archive) != answer.headers.get("X-Orchestra-Digest", record.digest):
                    raise Unreachable(
                        f"the download of version {version} does not match its digest"
                    )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def aliases(self, module_id: int) -> Aliases:
        """The aliases and their history."""
        return aliases_record(self._json("GET", f"/module/{module_id}/aliases"))

    def move_alias(self, module_id: int, name: str, version: int) -> Aliases:
        """Point an alias at a version (the server records who: the token's name)."""
        payload = {"version": version}
        path = f"/module/{module_id}/alias/{quote(name, safe='')}"
        return aliases_record(self._json("PUT", path, payload=payload))

    def remove_alias(self, module_id: int, name: str) -> Aliases:
        """Remove an alias (the server records who: the token's name)."""
        path = f"/module/{module_id}/alias/{quote(name, safe='')}"
        return aliases_record(self._json("DELETE", path))


def _read(response: http.client.HTTPResponse) -> bytes:
    with response:
        return response.read()


# -- uploads and downloads -------------------------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float
    st_mode: int = 0o100644


def aliases_record(data: Mapping[str, Any]) -> Aliases:
    """Aliases from their JSON form (``from`` is a Python keyword: ``from_``)."""
    history = tuple(
        AliasMove(m["alias"], m["from"], m["to"], _time(m["at"]) or datetime.min, m["by"])
        for m in data["history"]
    )
    return Aliases(dict(data["aliases"]), history)


class RemoteFile:
    """An output file on the server, read like a local Path: ``open("rb")`` and ``stat()``."""

    def __init__(self, client: Client, task_id: int, file: OutputFile, when: datetime) -> None:
        self._client, self._task_id, self._file, self._when = client, task_id, file, when

    def open(self, mode: str = "rb") -> BinaryIO:
        """The file's bytes, streamed from the server."""
        if mode != "rb":
            raise ValueError("a remote output file is read-only, in binary")
        return self._client.open_output(self._task_id, self._file.name)  # type: ignore[return-value]

    def stat(self) -> _Stat:
        """Its size and modification time (the task's end)."""
        stamp = self._when.replace(tzinfo=None) - datetime(1970, 1, 1)
        return _Stat(self._file.size, stamp.total_seconds())


class _Multipart:
    """A multipart/form-data body with one file, sent without reading the file into memory."""

    def __init__(self, fields: Mapping[str, str], file: Path) -> None:
        self._boundary = uuid.uuid4().hex
        self._file = file
        head = b"".join(
            self._part(f'name="{name}"', b"", value.encode()) for name, value in fields.items()
        )
        disposition = 'name="file"; filename="module.zip"'
        self._head = head + self._part(disposition, b"Content-Type: application/zip\r\n", None)
        self._tail = f"\r\n--{self._boundary}--\r\n".encode()

    def _part(self, disposition: str, extra: bytes, value: bytes | None) -> bytes:
        start = f"--{self._boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode()
        return start + extra + b"\r\n" + (b"" if value is None else value + b"\r\n")

    def headers(self) -> dict[str, str]:
        """Content-Type and Content-Length of the body."""
        size = len(self._head) + self._file.stat().st_size + len(self._tail)
        return {
            "Content-Type": f"multipart/form-data; boundary={self._boundary}",
            "Content-Length": str(size),
        }

    def chunks(self) -> Iterator[bytes]:
        """The body, a chunk at a time."""
        yield self._head
        with self._file.open("rb") as source:
            while chunk := source.read(_CHUNK):
                yield chunk
        yield self._tail


@contextlib.contextmanager
def packed_folder(folder: Path, subdir: str | None) -> Iterator[Path]:
    """A zip of the module in ``folder`` (or its ``subdir``): the files a registration uses."""
    from orchestra.manifest import METADATA_FILE, load_manifest
    from orchestra.sources.folder import copy_files, module_root

    # the same checks, in the same order, as a local registration: same errors, same words
    root = module_root(folder.resolve(), subdir, where=str(folder))
    manifest = load_manifest(root)
    entries = [METADATA_FILE, *manifest.files, *_requirement_files(root, manifest.raw)]
    with tempfile.TemporaryDirectory(prefix="orchestra-upload-") as scratch:
        staged = Path(scratch) / "module"
        staged.mkdir()
        copy_files(root, dict.fromkeys(entries), staged)
        archive = Path(scratch) / f"{manifest.name[:60] or 'module'}.zip".replace("/", "_")
        _zip_folder(staged, archive)
        yield archive


def _requirement_files(root: Path, raw: Mapping[str, Any]) -> list[str]:
    install = raw.get("install") if isinstance(raw.get("install"), dict) else {}
    named = [install.get("requirements"), install.get("requirements_file"), "requirements.txt"]  # type: ignore[union-attr]
    return [n for n in named if isinstance(n, str) and n and (root / n).is_file()]


def _zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for base, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(base) / name
                zipped.write(path, arcname=path.relative_to(folder).as_posix())
