"""One small handler per command: call the service, render what it returns."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TextIO

from orchestra import zipstream
from orchestra.access.caller import Caller
from orchestra.cli import render
from orchestra.errors import InvalidInput, NotFound, OrchestraError, WrongState
from orchestra.manifest import load_manifest
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.interface import Orchestra
    from orchestra.records import ModuleInfo, TaskInfo

_LOGGER = logging.getLogger(__name__)
FOLLOW_INTERVAL = 0.5  # seconds between looks at a followed task's log
_CHUNK = 256 * 1024  # bytes copied at a time into an output file or zip


@dataclass
class Context:
    """What every handler needs: the settings, the output streams, and the service."""

    settings: Settings
    json: bool = False
    user: str | None = None  # the end user the command acts for (--user)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _service: Orchestra | None = None
    _acting: object = None  # the mark that undoes acting as the local caller

    @property
    def service(self) -> Orchestra:
        """The service, built on first use (``--help`` and usage errors never open the database).

        With a server URL (``--url``, ``ORCHESTRA_URL``) it is that server's REST API instead:
        the client offers the same methods and returns the same records.
        """
        if self._service is None:
            if self.settings.url:
                from orchestra.client import Client

                self._service = Client(
                    self.settings.url, token=self.settings.api_token, user=self.user
                )
            else:
                from orchestra.access.caller import LOCAL, set_current
                from orchestra.service import Service

                # the command line on this data folder acts as "local"
                self._acting = set_current(Caller(LOCAL.name, LOCAL.role, self.user))
                self._service = Service(self.settings)
        return self._service

    def close(self) -> None:
        """Release the service when one was built."""
        if self._service is not None:
            self._service.close()
        if self._acting is not None:
            from orchestra.access.caller import reset

            reset(self._acting)
            self._acting = None

    def note(self, message: str) -> None:
        """A progress or side note for people, on standard error."""
        self.err.write(f"orchestra: {message}\n")
        self.err.flush()

    def emit(self, data: Any, text: str) -> None:
        """The command's result: JSON with ``--json``, else text."""
        render.emit(self.out, data, text, json_output=self.json)


Handler = Callable[[Context, argparse.Namespace], int]


# -- modules -------------------------------------------------------------------------------


def register(ctx: Context, args: argparse.Namespace) -> int:
    """Install each source; with --skip-existing, skip folders whose name is installed."""
    taken = _installed_names(ctx) if args.skip_existing else set()
    registered: list[ModuleInfo] = []
    skipped: list[dict[str, str]] = []
    for source in args.sources:
        name = _local_module_name(source, args.subdir) if args.skip_existing else None
        if name is not None and name in taken:
            ctx.note(f"skipping {source}: module {name!r} is already installed")
            skipped.append({"source": source, "name": name})
            continue
        info = ctx.service.register(
            source, ref=args.ref, subdir=args.subdir, staged=args.staged, progress=ctx.note,
            as_of=args.as_of, python=args.python,
        )  # fmt: skip
        registered.append(info)
        taken.add(info.name or "")
        if not ctx.json:
            where = ctx.settings.place()
            ctx.out.write(
                f"registered module {info.id} into {where}: {info.name} ({info.status})\n"
            )
    if ctx.json:
        ctx.emit({"registered": [m.to_dict() for m in registered], "skipped": skipped}, "")
    return 0


def _installed_names(ctx: Context) -> set[str]:
    modules = ctx.service.list_modules(everything=True)  # a staged module's name is taken too
    return {m.name for m in modules if m.name and m.status not in ("error", "removed")}


def _local_module_name(source: str, subdir: str | None) -> str | None:
    folder = Path(source) / (subdir or "")
    if not folder.is_dir():
        return None  # a git URL, or a missing folder that registration will report
    try:
        return load_manifest(folder).name
    except OrchestraError:
        return None  # registration names every problem with it


def list_modules(ctx: Context, args: argparse.Namespace) -> int:
    """Every module, staged and removed ones too: operators see them all."""
    modules = ctx.service.list_modules(everything=True)
    ctx.emit([m.to_dict() for m in modules], render.modules_table(modules))
    return 0


def remove(ctx: Context, args: argparse.Namespace) -> int:
    """Remove modules; every id is checked before anything is removed."""
    for module_id in args.ids:
        ctx.service.get_module(module_id)
    for module_id in dict.fromkeys(args.ids):
        ctx.service.remove(module_id, force=args.force, purge=args.purge)
        if not ctx.json:
            ctx.out.write(f"removed module {module_id} from {ctx.settings.place()}\n")
    if ctx.json:
        ctx.emit({"removed": list(dict.fromkeys(args.ids))}, "")
    return 0


def clear(ctx: Context, args: argparse.Namespace) -> int:
    """Remove every module and task, after a confirmation."""
    count = len(ctx.service.list_modules(everything=True))
    if not args.yes and not _confirm(ctx, f"remove all {count} module(s) and every task?"):
        ctx.note("cancelled; nothing removed")
        return 1
    ctx.service.clear()
    where = ctx.settings.place()
    ctx.emit({"removed_modules": count}, f"removed {count} module(s) and every task from {where}")
    return 0


def _confirm(ctx: Context, question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        raise InvalidInput(
            "clear removes every module and task; nobody can confirm here (no terminal): "
            "pass --yes",
            key="yes",
        )
    ctx.err.write(f"{question} [y/N] ")
    ctx.err.flush()
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def show(ctx: Context, args: argparse.Namespace) -> int:
    """One module."""
    module = ctx.service.get_module(args.id)
    ctx.emit(module.to_dict(), render.module_details(module))
    return 0


def update(ctx: Context, args: argparse.Namespace) -> int:
    """Re-install a module from its source, or from a new zip archive."""
    archive = _zip_argument(args.zip) if args.zip else None
    module = ctx.service.update(args.id, ref=args.ref, archive=archive, progress=ctx.note)
    where = ctx.settings.place()
    text = f"updated module {module.id} in {where}: {module.name} ({module.status})"
    ctx.emit(module.to_dict(), text)
    return 0


def _zip_argument(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise InvalidInput(f"--zip: {text!r} is not a file", key="zip")
    return path.resolve()


def publish(ctx: Context, args: argparse.Namespace) -> int:
    """Show a staged module to clients."""
    module = ctx.service.publish(args.id)
    where = ctx.settings.place()
    ctx.emit(module.to_dict(), f"published module {module.id} in {where}: {module.name}")
    return 0


def stage(ctx: Context, args: argparse.Namespace) -> int:
    """Hide a module from clients until it is published."""
    module = ctx.service.stage(args.id)
    ctx.emit(
        module.to_dict(), f"staged module {module.id} in {ctx.settings.place()}: {module.name}"
    )
    return 0


def prune(ctx: Context, args: argparse.Namespace) -> int:
    """Forget ended tasks older than a number of days, with their files."""
    pruned = ctx.service.prune(args.older_than)
    text = (
        f"forgot {pruned.tasks} task(s) ended more than {pruned.older_than_days:g} day(s) ago "
        f"in {ctx.settings.place()}"
    )
    if pruned.modules:
        text += f", and {pruned.modules} removed module(s) left without tasks"
    ctx.emit(pruned.to_dict(), text)
    return 0


def serve(ctx: Context, args: argparse.Namespace) -> int:
    """The REST API and the task runner, until SIGTERM or Ctrl-C."""
    from orchestra.api.server import serve as run_server

    _runs_here("serve", args)
    return run_server(ctx.settings)


def worker(ctx: Context, args: argparse.Namespace) -> int:
    """Take tasks from the queues and run them here, until SIGTERM or Ctrl-C."""
    from orchestra.distributed.main import default_name, run_worker

    _runs_here("worker", args)
    return run_worker(
        ctx.settings, name=args.name or default_name(), queues=args.queues,
        concurrency=args.concurrency,
    )  # fmt: skip


def _runs_here(command: str, args: argparse.Namespace) -> None:
    """Refuse ``--url`` (given before the command) where it would be ignored."""
    if getattr(args, "url", None):
        reach = (
            "; a worker reaches its API through ORCHESTRA_API_URL" if command == "worker" else ""
        )
        raise InvalidInput(
            f"--url drives a remote server's commands; `{command}` runs on this machine{reach}",
            key="url",
        )


# -- tasks ---------------------------------------------------------------------------------


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Start a task; with --wait, follow it to its end."""
    task = ctx.service.run(args.id, parse_assignments(args.arguments))
    if not args.wait:
        ctx.emit(task.to_dict(), f"task {task.id} in {ctx.settings.place()}: {task.status}")
        return 0
    ctx.note(f"task {task.id} in {ctx.settings.place()}: {task.status}")
    final = follow(ctx, task.id)
    ctx.emit(final.to_dict(), render.task_details(final))
    return 0 if final.status == TaskStatus.DONE else 1


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``name=value`` words as a dict; a word without ``=`` or a repeated name is an error."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"argument {item!r}: expected NAME=VALUE", key=item)
        if name in values:
            raise InvalidInput(f"argument {name!r} given more than once", key=name)
        values[name] = value
    return values


def follow(ctx: Context, task_id: int) -> TaskInfo:
    """Show a task's log as it grows (on standard error) until the task ends."""
    shown = {"stdout": 0, "stderr": 0}
    while True:
        task = ctx.service.get_task(task_id, wait=FOLLOW_INTERVAL)
        log = ctx.service.task_log(task_id)
        for stream in ("stdout", "stderr"):
            text = log.get(stream, "")
            if len(text) > shown[stream]:
                ctx.err.write(text[shown[stream] :])
                ctx.err.flush()
                shown[stream] = len(text)
        if TaskStatus(task.status).is_final:
            return task


def tasks(ctx: Context, args: argparse.Namespace) -> int:
    """Tasks newest first."""
    page = ctx.service.list_tasks(
        status=args.status,
        module=args.module,
        limit=args.limit,
        offset=args.offset,
        cursor=args.cursor,
        submitted_by=args.submitted_by,
        user=args.for_user,
    )
    ctx.emit(page.to_dict(), render.tasks_table(page))
    return 0


def task(ctx: Context, args: argparse.Namespace) -> int:
    """One task."""
    info = ctx.service.get_task(args.id)
    ctx.emit(info.to_dict(), render.task_details(info))
    return 0


def kill(ctx: Context, args: argparse.Namespace) -> int:
    """Kill tasks; every id is checked before any is killed."""
    for task_id in args.ids:
        ctx.service.get_task(task_id)
    killed = [ctx.service.kill(task_id) for task_id in dict.fromkeys(args.ids)]
    where = ctx.settings.place()
    text = "\n".join(f"task {info.id} in {where}: {info.status}" for info in killed)
    # one id answers one record, as it always did; several, a list
    data = killed[0].to_dict() if len(killed) == 1 else [info.to_dict() for info in killed]
    ctx.emit(data, text)
    return 0


def log(ctx: Context, args: argparse.Namespace) -> int:
    """A task's standard output and standard error so far."""
    logs = ctx.service.task_log(args.id)
    if ctx.json:
        ctx.emit(logs, "")
    else:
        ctx.out.write(logs.get("stdout", ""))
        ctx.err.write(logs.get("stderr", ""))
    return 0


def output(ctx: Context, args: argparse.Namespace) -> int:
    """Save a task's output: the file itself, or a zip when there are several."""
    if args.votable:
        return _output_votable(ctx, args)
    files = ctx.service.task_outputs(args.id)
    if not files:
        raise NotFound(f"task {args.id} wrote no output files")
    if len(files) == 1:
        default = PurePosixPath(files[0][0]).name
    else:
        default = f"task-{args.id}-output.zip"
    target = Path(args.output) if args.output else Path.cwd() / default
    if not args.output and target.exists():
        raise WrongState(f"{target} already exists; choose another name with -o FILE", key="output")
    if len(files) == 1:
        _write_via_temp(target, lambda handle: _copy(files[0][1], handle))
    else:
        _write_via_temp(target, lambda handle: _zip(files, handle))
    size = target.stat().st_size
    ctx.emit(
        {"path": str(target), "size": size, "files": [name for name, _ in files]},
        f"wrote {target} ({size} bytes)",
    )
    return 0


def _output_votable(ctx: Context, args: argparse.Namespace) -> int:
    """Save a task's catalog or time table as a VOTable (``output --votable``)."""
    name, data = ctx.service.task_votable(args.id)
    target = Path(args.output) if args.output else Path.cwd() / name
    if not args.output and target.exists():
        raise WrongState(f"{target} already exists; choose another name with -o FILE", key="output")
    _write_via_temp(target, lambda handle: handle.write(data))
    ctx.emit({"path": str(target), "size": len(data)}, f"wrote {target} ({len(data)} bytes)")
    return 0


def _copy(source: Any, handle: Any) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, handle)


def _zip(files: Sequence[tuple[str, Any]], handle: Any) -> None:
    # each file is read through open() and stat(): a local Path or a server's RemoteFile
    for data in zipstream.stream(files):
        handle.write(data)


def _write_via_temp(target: Path, write: Callable[[Any], None]) -> None:
    # a failure half-way leaves no partial file under the final name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            # mkstemp makes it 0600: give it the mode any new file gets here (or the old one's)
            os.fchmod(handle.fileno(), _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode(target: Path) -> int:
    """The mode of ``target`` if it exists, else what the umask leaves of 0666."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # read it; the command line has no other thread creating files
        os.umask(umask)
        return 0o666 & ~umask


# -- access --------------------------------------------------------------------------------


def token(ctx: Context, args: argparse.Namespace) -> int:
    """``token create|list|revoke``: API tokens with roles."""
    if args.token_action == "create":
        made = ctx.service.create_token(args.name, role=args.role, expires_days=args.expires)
        expiry = made.to_dict()["expires"] or "never"
        # the token alone on the last line, for scripts: `orchestra token create … | tail -1`
        text = f"token {made.name} ({made.role}), expires {expiry}; it is shown only now:\n"
        ctx.emit(made.to_dict(), text + made.token)
    elif args.token_action == "list":
        tokens = ctx.service.list_tokens()
        ctx.emit({"tokens": [t.to_dict() for t in tokens]}, render.tokens_table(tokens))
    else:
        revoked = ctx.service.revoke_token(args.name)
        ctx.emit({"revoked": revoked.name}, f"token {revoked.name}: revoked")
    return 0


def audit(ctx: Context, args: argparse.Namespace) -> int:
    """The audit log, newest first."""
    page = ctx.service.audit_log(
        who=args.who, action=args.action, since=args.since, limit=args.limit,
        offset=args.offset, cursor=args.cursor,
    )  # fmt: skip
    ctx.emit(page.to_dict(), render.audit_table(page))
    return 0


# -- trainings and model versions ----------------------------------------------------------


def train(ctx: Context, args: argparse.Namespace) -> int:
    """Start a training task; with --wait, follow it and name the version it made."""
    values: dict[str, Any] = parse_assignments(args.arguments)
    for option in ("base", "promote"):
        if option in values:
            raise InvalidInput(f"give {option} as --{option}, not as an argument", key=option)
    if args.base is not None:
        values["base"] = args.base
    if args.promote:
        values["promote"] = True
    task = ctx.service.train(args.id, values)
    if not args.wait:
        ctx.emit(task.to_dict(), f"task {task.id}: {task.status}")
        return 0
    ctx.note(f"task {task.id}: {task.status}")
    final = follow(ctx, task.id)
    text = render.task_details(final)
    if final.trained is not None:
        text += f"\nmodel version {final.trained} of module {final.module}"
    ctx.emit(final.to_dict(), text)
    return 0 if final.status == TaskStatus.DONE else 1


def models(ctx: Context, args: argparse.Namespace) -> int:
    """A module's model versions, newest first, metrics as columns."""
    found = ctx.service.list_models(args.id)
    ctx.emit({"models": [v.to_dict() for v in found]}, render.models_table(found))
    return 0


def model(ctx: Context, args: argparse.Namespace) -> int:
    """One model version; with -o, its files saved as a zip."""
    if not args.output:
        record = ctx.service.get_model(args.id, args.version)
        ctx.emit(record.to_dict(), render.model_details(record))
        return 0
    target = Path(args.output)
    record = ctx.service.download_model(args.id, args.version, target)
    size = target.stat().st_size
    ctx.emit({"path": str(target), "size": size, "digest": record.digest},
             f"wrote {target} ({size} bytes, {record.digest})")  # fmt: skip
    return 0


def alias(ctx: Context, args: argparse.Namespace) -> int:
    """Move an alias to version N, or remove it (--remove)."""
    if args.remove == (args.version is not None):
        raise InvalidInput("give a version N to move the alias to, or --remove", key="version")
    if args.remove:
        found = ctx.service.remove_alias(args.id, args.name)
    else:
        found = ctx.service.move_alias(args.id, args.name, args.version)
    ctx.emit(found.to_dict(), render.aliases_text(found))
    return 0


COMMANDS: dict[str, Handler] = {
    "register": register,
    "list": list_modules,
    "remove": remove,
    "clear": clear,
    "show": show,
    "update": update,
    "publish": publish,
    "stage": stage,
    "prune": prune,
    "serve": serve,
    "worker": worker,
    "run": run,
    "tasks": tasks,
    "task": task,
    "kill": kill,
    "log": log,
    "output": output,
    "token": token,
    "audit": audit,
    "train": train,
    "models": models,
    "model": model,
    "alias": alias,
}
