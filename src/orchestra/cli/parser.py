"""The command line's grammar: sub-commands, and the flag spellings existing operators use.

``--register X`` and ``register X`` are one command: the flag form is rewritten to the
sub-command form before parsing, so both reach the same handler with the same options.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from orchestra import __version__
from orchestra.limits import MAX_ID
from orchestra.tasks.status import TaskStatus

_LOGGER = logging.getLogger(__name__)
PROG = "orchestra"
FLAG_COMMANDS = {
    "--register": "register",
    "--list": "list",
    "--remove": "remove",
    "--clear": "clear",
}
_GLOBAL_WITH_VALUE = frozenset({"--home", "--url", "--user"})


def normalize(argv: Sequence[str]) -> list[str]:
    """Rewrite the flag form (``--register X``) of a command to its sub-command form."""
    out = list(argv)
    i = 0
    while i < len(out):
        token = out[i]
        name, has_value, value = token.partition("=")
        if name in FLAG_COMMANDS:
            out[i : i + 1] = [FLAG_COMMANDS[name], value] if has_value else [FLAG_COMMANDS[name]]
            break
        if token in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if not token.startswith("-") or token == "--":
            break  # a sub-command (or a positional) comes first: nothing to rewrite
        i += 1
    return out


def object_id(text: str) -> int:
    """An id as argparse reads it: a positive integer a database can hold."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= MAX_ID):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid id (a positive integer)")
    return int(text)


def _globals(*, suppress: bool, url: bool = True) -> argparse.ArgumentParser:
    # the same options before and after the command; the copy on each sub-command
    # suppresses its defaults so that it never overwrites a value given before it
    text_default = argparse.SUPPRESS if suppress else None
    flag_default = argparse.SUPPRESS if suppress else False
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--home", metavar="DIR", default=text_default, help="the data folder")
    if url:  # not offered by the commands that run here (serve, worker), which ignore it
        parent.add_argument(
            "--url",
            metavar="URL",
            default=text_default,
            help="drive the server at URL through its REST API (also: ORCHESTRA_URL)",
        )
        parent.add_argument(
            "--user",
            metavar="NAME",
            default=text_default,
            help="the end user this command acts for (recorded with the tasks it starts)",
        )
    parent.add_argument(
        "--json", action="store_true", default=flag_default, help="machine-readable output"
    )
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=flag_default, help="log what happens"
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The whole grammar."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Install machine-learning modules in their own environments; run them.",
        parents=[_globals(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _globals(suppress=True)
    for add in (_module_commands, _task_commands, _access_commands, _model_commands):
        add(commands, common)
    _service_commands(commands, _globals(suppress=True, url=False))
    return parser


def _module_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("register", parents=[common], help="install modules (also: --register)")
    p.add_argument("sources", nargs="+", metavar="PATH_OR_URL", help="a folder or git URL")
    p.add_argument("--ref", help="git branch, tag or commit")
    p.add_argument("--subdir", help="the folder holding metadata.json")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a folder whose module name is already installed",
    )
    p.add_argument("--staged", action="store_true", help="hide it from clients until published")
    p.add_argument(
        "--as-of",
        metavar="DATE|commit",
        help="ignore packages released after DATE (YYYY-MM-DD) or the commit's date, "
        "where the module does not say (install.resolve_as_of)",
    )
    p.add_argument(
        "--python",
        metavar="X.Y",
        help="the interpreter, where the module does not say (install.python_version)",
    )
    commands.add_parser(
        "list", parents=[common], help="list modules, staged and removed ones too (also: --list)"
    )
    p = commands.add_parser("remove", parents=[common], help="remove modules (also: --remove)")
    p.add_argument("ids", nargs="+", type=object_id, metavar="ID")
    p.add_argument("--force", action="store_true", help="kill their running tasks first")
    p.add_argument("--purge", action="store_true", help="forget their tasks and outputs too")
    for name, text in (("publish", "show a staged module to clients"),
                       ("stage", "hide a module from clients until published")):  # fmt: skip
        p = commands.add_parser(name, parents=[common], help=text)
        p.add_argument("id", type=object_id, metavar="ID")
    p = commands.add_parser("prune", parents=[common], help="forget old ended tasks and files")
    p.add_argument(
        "--older-than", type=float, metavar="DAYS", dest="older_than",
        help="ended more than DAYS ago (default: ORCHESTRA_TASK_RETENTION_DAYS)",
    )  # fmt: skip
    p = commands.add_parser(
        "clear", parents=[common], help="remove every module and task (also: --clear)"
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
    p = commands.add_parser("show", parents=[common], help="show one module")
    p.add_argument("id", type=object_id, metavar="ID")
    p = commands.add_parser(
        "update", parents=[common], help="re-install a module from its source or a new zip"
    )
    p.add_argument("id", type=object_id, metavar="ID")
    p.add_argument("--ref", help="git branch, tag or commit to move to")
    p.add_argument("--zip", metavar="FILE", help="install this zip archive as the new version")


def _service_commands(commands: argparse._SubParsersAction, local: argparse.ArgumentParser) -> None:
    p = commands.add_parser("serve", parents=[local], help="serve the REST API and run tasks")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback address without an API token",
    )

    p = commands.add_parser(
        "worker", parents=[local], help="run tasks for a cluster (its API: ORCHESTRA_API_URL)"
    )
    p.add_argument("--concurrency", type=_positive, default=1, help="tasks at once (default 1)")
    p.add_argument(
        "--queues", type=_queues, default=["default"], help="queues to take, comma-separated"
    )
    p.add_argument("--name", help="this worker's name (default: host name and process id)")


def _queues(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one queue name")
    return names


def _task_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("run", parents=[common], help="start a task")
    p.add_argument("id", type=object_id, metavar="ID", help="the module")
    p.add_argument(
        "arguments", nargs="*", metavar="NAME=VALUE", help="an argument or hyperparameter"
    )
    p.add_argument("--wait", action="store_true", help="follow the task to its end")
    p = commands.add_parser("tasks", parents=[common], help="list tasks, newest first")
    p.add_argument("--status", choices=[s.value for s in TaskStatus], help="only in this state")
    p.add_argument("--module", type=object_id, metavar="ID", help="only this module's tasks")
    p.add_argument("--limit", type=_positive, default=50, help="tasks on one page")
    p.add_argument("--offset", type=_non_negative, default=0, help="tasks to skip first")
    p.add_argument("--cursor", help="continue after a previous page")
    p.add_argument("--submitted-by", dest="submitted_by", metavar="TOKEN",
                   help="only tasks submitted with this token (local: this machine)")  # fmt: skip
    p.add_argument("--for-user", dest="for_user", metavar="NAME",
                   help="only tasks submitted for this end user")  # fmt: skip
    for name, text in (("task", "show one task"), ("log", "a task's log")):
        p = commands.add_parser(name, parents=[common], help=text)
        p.add_argument("id", type=object_id, metavar="ID")
    p = commands.add_parser("kill", parents=[common], help="kill tasks")
    p.add_argument("ids", nargs="+", type=object_id, metavar="ID")
    p = commands.add_parser("output", parents=[common], help="save a task's output")
    p.add_argument("id", type=object_id, metavar="ID")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it")
    p.add_argument(
        "--votable", action="store_true", help="a catalog or time table as an IVOA VOTable"
    )


def _access_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from orchestra.access.roles import ROLES

    p = commands.add_parser("token", parents=[common], help="API tokens with roles")
    actions = p.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    q = actions.add_parser("create", parents=[common], help="make a token; printed once")
    q.add_argument("name", help="[a-z][a-z0-9_-]{0,63}, unique among live tokens")
    q.add_argument("--role", required=True, choices=ROLES)
    q.add_argument("--expires", type=_days, metavar="DAYS", help="expire after DAYS days")
    actions.add_parser("list", parents=[common], help="names, roles, use and expiry")
    q = actions.add_parser("revoke", parents=[common], help="revoke a token at once")
    q.add_argument("name")
    p = commands.add_parser("audit", parents=[common], help="the audit log, newest first")
    p.add_argument("--who", help="only entries of this token (local: this machine)")
    p.add_argument("--action", help="only entries of this action (e.g. module.register)")
    p.add_argument("--since", type=_moment, help="only entries from this ISO 8601 time on")
    p.add_argument("--limit", type=_positive, default=50)
    p.add_argument("--offset", type=_non_negative, default=0)
    p.add_argument("--cursor", help="continue after a previous page")


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0 < DAYS <= 36500)")
    return value


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _model_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("train", parents=[common], help="start a training task")
    p.add_argument("id", type=object_id, metavar="ID", help="the module")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE")
    p.add_argument("--base", metavar="V", help="start from version V (a number or @alias)")
    p.add_argument("--promote", action="store_true", help="make the new version the default")
    p.add_argument("--wait", action="store_true", help="follow the training to its end")
    p = commands.add_parser("models", parents=[common], help="list a module's model versions")
    p.add_argument("id", type=object_id, metavar="ID", help="the module")
    p = commands.add_parser("model", parents=[common], help="show or download a model version")
    p.add_argument("id", type=object_id, metavar="ID", help="the module")
    p.add_argument("version", type=_positive, metavar="N")
    p.add_argument("-o", "--output", metavar="FILE.zip", help="save its files as a zip")
    p = commands.add_parser("alias", parents=[common], help="move or remove a model alias")
    p.add_argument("id", type=object_id, metavar="ID", help="the module")
    p.add_argument("name", metavar="NAME", help="the alias, e.g. default or champion")
    p.add_argument("version", type=_positive, metavar="N", nargs="?")
    p.add_argument("--remove", action="store_true", help="remove the alias")


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _non_negative(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line (either spelling); argparse exits 2 on a usage error."""
    return build_parser().parse_args(normalize(argv))
