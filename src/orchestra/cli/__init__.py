"""The command line: ``main(argv) -> exit code``; user errors are translated here, once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestra.errors import InstallError, OrchestraError, disk_full, is_disk_full

if TYPE_CHECKING:
    from orchestra.config import Settings

_LOGGER = logging.getLogger(__name__)
PROG = "orchestra"
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Run one command; ``settings`` (for tests and embedding) replaces the environment's."""
    from orchestra.cli.commands import COMMANDS, Context
    from orchestra.cli.parser import parse

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: 2 for a usage error, 0 for --help and --version
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging(args)
    ctx: Context | None = None
    try:
        user = getattr(args, "user", None)  # serve and worker do not take --user
        ctx = Context(_settings(args, settings), json=bool(args.json), user=user)
        return COMMANDS[args.command](ctx, args)
    except OrchestraError as err:
        _report(err, verbose=bool(args.verbose))
        return err.exit_code
    except Exception as exc:
        if not is_disk_full(exc) or ctx is None:
            raise
        full = disk_full(ctx.settings.home)
        _report(full, verbose=bool(args.verbose))
        return full.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return INTERRUPTED
    finally:
        if ctx is not None:
            ctx.close()


def entry() -> None:
    """The ``orchestra`` console script (and ``python -m orchestra``)."""
    code = main()
    # Every command has closed what it opened by now (the database, the launcher, files).
    # Skipping the interpreter's teardown of SQLAlchemy and the rest takes 0.1 s off every
    # command on a slow machine: a seventh of a registration.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass
    os._exit(code)


def _settings(args: argparse.Namespace, given: Settings | None) -> Settings:
    from orchestra.config import load_settings

    overrides = {
        "home": args.home,
        "url": args.url,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "insecure": getattr(args, "insecure", None),
    }
    if given is not None:
        return given.with_overrides(**overrides)
    return load_settings(overrides)


def _report(err: OrchestraError, *, verbose: bool) -> None:
    message = " ".join(err.message.splitlines()) if not verbose else err.message
    sys.stderr.write(f"{PROG}: error: {message}\n")
    if verbose and isinstance(err, InstallError) and err.log:
        sys.stderr.write(err.log.rstrip() + "\n")


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO if args.verbose or args.command in ("serve", "worker") else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
