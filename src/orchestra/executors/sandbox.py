"""Each task in a sandbox, with limits: what the machine allows, and the command that runs it.

The sandbox is Debian's bubblewrap (``bwrap``): new user, mount, pid, ipc, uts, cgroup and
network namespaces (the network shared only when the module declares ``network: true``), a
root that holds the system's programs and libraries read-only (``/usr`` and its links, a few
files of ``/etc``), the interpreter the environment was built from, the module's code and
environment read-only, its output folder writable, a private ``/tmp`` and ``/dev``, a new
``/proc`` that shows only the task's own processes, no capabilities, and a new session.
Nothing else of the data folder is there: no database, no other module or task, no log of
its own (the supervisor opened them before the sandbox was made). The environment is the
clean one the runner builds (no ``ORCHESTRA_*`` setting, no token).

What works is found out once per process (:func:`detect`), by running bubblewrap with the
same namespaces once, and by making and removing a cgroup where the limits would go.
The limits themselves are applied by the supervisor (``limits.py``).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra.errors import SandboxUnavailable
from orchestra.manifest import LIMIT_KEYS

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.files import InstallFolder

_LOGGER = logging.getLogger(__name__)
_CHECK_TIMEOUT = 20.0  # seconds the trial run of bubblewrap may take on a busy machine
# what a module may read of /etc: the loader's cache, the time zone, program links, users;
# with the network, what names and certificates need. Each bind costs a start some time.
_ETC = ("ld.so.cache", "localtime", "alternatives", "passwd")
_ETC_NETWORK = ("ssl", "ca-certificates", "pki", "resolv.conf", "hosts", "host.conf",
                "nsswitch.conf", "gai.conf", "services", "protocols")  # fmt: skip
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# the supervisor, bubblewrap and its pid 1: processes of a task that its module did not make
_OVERHEAD_SANDBOXED = 3
_OVERHEAD_PLAIN = 1
_PLAIN_ENV = {"PATH": "/usr/bin:/bin"}


@dataclass(frozen=True)
class SandboxState:
    """What this machine allows: the sandbox, and where the limits can be enforced."""

    mode: str
    active: bool
    detail: str  # the tool and version, or why there is no sandbox
    bwrap: str = ""
    memory_cgroup: str = ""  # the cgroup v1 folder that tasks' memory groups go below
    pids_cgroup: str = ""  # the same for the process limit

    def describe(self) -> dict[str, Any]:
        """What /health and the start-up line say."""
        return {
            "mode": self.mode,
            "active": self.active,
            "detail": self.detail,
            "network": "none unless the module declares network: true" if self.active else "host",
            "limits": {
                "memory_mb": "cgroup" if self.memory_cgroup else "RLIMIT_DATA",
                "cpu_seconds": "RLIMIT_CPU (per process)",
                "output_mb": "RLIMIT_FSIZE and the supervisor's sum of all files",
                "processes": "cgroup" if self.pids_cgroup else "not enforced (no pids cgroup)",
            },
        }

    def summary(self) -> str:
        """What a server or a worker says at start: on or OFF, why, and how to get it."""
        hint = f": {self.hint}" if self.hint else ""
        return f"{'on' if self.active else 'OFF'} ({self.detail}){hint}"

    @property
    def hint(self) -> str:
        """How to get the sandbox where it does not work (empty where it does, or is off)."""
        if self.active or self.mode == "off":
            return ""
        if not self.bwrap and "not installed" in self.detail:
            return _HINT_INSTALL
        return _HINT_NAMESPACES


_HINT_INSTALL = (
    "install the bubblewrap package (apt install bubblewrap; dnf install bubblewrap) and "
    "start again: see docs/operating.md#getting-the-sandbox"
)
_HINT_NAMESPACES = (
    "allow unprivileged user namespaces, install bwrap setuid, or run as root: "
    "see docs/operating.md#getting-the-sandbox"
)


@functools.cache
def detect(mode: str) -> SandboxState:
    """Find out once what works here: bubblewrap with its namespaces, cgroups for limits."""
    memory, pids = _cgroup_base("memory"), _cgroup_base("pids")
    if mode == "off":
        return SandboxState(mode, False, "off (ORCHESTRA_SANDBOX=off)", "", memory, pids)
    bwrap = shutil.which("bwrap") or ""
    if not bwrap:
        why = "bubblewrap (bwrap) is not installed"
        return SandboxState(mode, False, why, "", memory, pids)
    works, detail = _try_bwrap(bwrap)
    return SandboxState(mode, works, detail, bwrap if works else "", memory, pids)


def trial_argv(bwrap: str) -> list[str]:
    """The trial run of bubblewrap: every namespace a task gets, and nothing else."""
    return [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]  # fmt: skip


def _try_bwrap(bwrap: str) -> tuple[bool, str]:
    argv = trial_argv(bwrap)
    try:
        version = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, timeout=_CHECK_TIMEOUT
        ).stdout.strip()
        trial = subprocess.run(
            argv, capture_output=True, text=True, timeout=_CHECK_TIMEOUT, env=_PLAIN_ENV
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"bubblewrap does not run: {exc}"
    if trial.returncode != 0:
        # typically: no unprivileged user namespaces (a kernel setting) and no setuid bwrap
        reason = trial.stderr.strip().splitlines()[-1:] or [f"exit status {trial.returncode}"]
        return False, f"bubblewrap cannot make its namespaces here: {reason[0]}"
    return True, version or "bubblewrap"


def _cgroup_base(controller: str) -> str:
    """This process's own cgroup v1 folder for ``controller`` if tasks' groups can go below it."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = f"/sys/fs/cgroup/{controller}{path.rstrip('/')}"
            return base if _can_nest(base) else ""
    return ""


def _can_nest(base: str) -> bool:
    probe = os.path.join(base, f"orchestra-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError:
        return False
    return True


def require(settings: Settings) -> SandboxState:
    """The state for ``settings``; refuses when the sandbox is required but does not work."""
    state = detect(settings.sandbox)
    if settings.sandbox == "required" and not state.active:
        raise SandboxUnavailable(f"ORCHESTRA_SANDBOX=required, but {state.detail}")
    return state


def prepared_cgroups(settings: Settings) -> list[str]:
    """The cgroup folders every task's groups go below: the server's own limits need them.

    A supervisor waiting for its task makes and joins its groups there ahead of time
    (``limits.prepare``); a module that declares a limit the server does not set gets its
    group made when its task starts.
    """
    state = detect(settings.sandbox)
    wanted = [(settings.task_memory_mb, state.memory_cgroup),
              (settings.task_processes, state.pids_cgroup)]  # fmt: skip
    return [base for limit, base in wanted if limit and base]


def effective_limits(settings: Settings, own: Mapping[str, int]) -> dict[str, int]:
    """A task's limits: the server's, or its module's ``own`` where lower (0 = none)."""
    server = {
        "memory_mb": settings.task_memory_mb, "cpu_seconds": settings.task_cpu_seconds,
        "output_mb": settings.task_output_mb, "processes": settings.task_processes,
    }  # fmt: skip
    limits = {}
    for key in LIMIT_KEYS:
        given = [v for v in (server[key], own.get(key, 0)) if v]
        limits[key] = min(given) if given else 0
    return limits


def confine(
    spec: dict[str, Any],
    *,
    settings: Settings,
    install: InstallFolder,
    output: Path,
    network: bool = False,
    limits: Mapping[str, int] | None = None,
    readonly: Sequence[Path] = (),
    output_at: str | None = None,
    readonly_at: Sequence[tuple[Path, str]] = (),
) -> dict[str, Any]:
    """``spec`` (argv, env, cwd) made to run in the sandbox with its limits, where they apply.

    ``network`` and ``limits`` are the module's (``metadata.json``); ``readonly``: folders
    it reads besides its module (a model version); paths are this machine's. ``output_at``:
    where the output folder is seen inside when not at its own path (a spare interpreter's,
    which has no task yet), with an empty tasks' folder where it makes its task's path;
    ``readonly_at``: files or folders given read-only at another path inside (its program).
    """
    state = require(settings)
    task_limits: dict[str, Any] = effective_limits(settings, limits or {})
    if any(task_limits.values()):
        overhead = _OVERHEAD_SANDBOXED if state.active else _OVERHEAD_PLAIN
        task_limits.update(memory_cgroup=state.memory_cgroup, pids_cgroup=state.pids_cgroup,
                           overhead=overhead)  # fmt: skip
        spec = {**spec, "limits": task_limits}
    if not state.active:
        return spec
    prefix = bwrap_argv(state, install=install, output=output, network=network,
                        output_at=output_at, tasks_dir=settings.tasks_dir)  # fmt: skip
    for folder in readonly:  # after the chdir option: bubblewrap reads binds in any order
        prefix += ["--ro-bind", str(folder), str(folder)]
    for source, inside in readonly_at:
        prefix += ["--ro-bind", str(source), inside]
    argv = [*prefix, "--", *spec["argv"]]
    env = {**spec["env"], "HOME": "/tmp", "TMPDIR": "/tmp"}
    return {**spec, "argv": argv, "env": env}


def bwrap_argv(
    state: SandboxState,
    *,
    install: InstallFolder,
    output: Path,
    network: bool,
    output_at: str | None = None,
    tasks_dir: Path | None = None,
) -> list[str]:
    """bubblewrap's options for a task of ``install`` writing into ``output`` (see confine)."""
    # no --die-with-parent: the sandbox's pid 1 ignores the parent-death signal (the kernel
    # spares a namespace's init), so it would outlive a killed supervisor unseen; without
    # it the tree stays below bubblewrap, where the server finds and kills it
    argv = [state.bwrap, "--unshare-all", *(["--share-net"] if network else []),
            "--new-session", "--cap-drop", "ALL"]  # fmt: skip
    argv += _system_binds(network)
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # after the tmpfs on /tmp: a data folder below /tmp gets its bind points on it
    prefix = interpreter_prefix(str(install.env))
    if prefix and prefix != "/usr" and not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    # the generation (code, environment, its install log) in one bind: each costs a start
    argv += ["--ro-bind", str(install.root), str(install.root)]
    argv += ["--bind", str(output), output_at or str(output)]
    if output_at and tasks_dir is not None:
        argv += ["--dir", str(tasks_dir)]
    return [*argv, "--chdir", str(install.code)]


def installer_argv(
    settings: Settings, *, workdir: Path, interpreter: str, uv_bin: str
) -> list[str]:
    """bubblewrap's options for building a module's source packages (empty: no sandbox).

    The build runs code from outside (``setup.py``, build backends): it reaches the package
    index and reads the machine's files, but of the data folder it sees only the installer
    cache and ``workdir``, both writable; no other module, no task, no database.
    """
    state = detect(settings.sandbox)
    if not state.active:
        return []
    home, cache = settings.home.resolve(), settings.uv_cache_dir.resolve()
    argv = [state.bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", str(home)]  # fmt: skip
    # what the data folder hid and the build needs: the tools (read-only), then the writable
    for path in (interpreter_prefix_of(interpreter), str(Path(uv_bin).resolve().parent)):
        if path and Path(path).is_relative_to(home):
            argv += ["--ro-bind", path, path]
    argv += ["--bind", str(cache), str(cache), "--bind", str(workdir), str(workdir)]
    return [*argv, "--chdir", str(workdir), "--setenv", "HOME", str(workdir),
            "--setenv", "TMPDIR", str(workdir), "--"]  # fmt: skip


def interpreter_prefix_of(python: str) -> str:
    """The installation an interpreter belongs to (the parent of its ``bin``)."""
    return str(Path(python).resolve().parent.parent)


@functools.cache
def _system_binds(network: bool) -> tuple[str, ...]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL:
        if os.path.islink(top):  # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for name in (*_ETC, *(_ETC_NETWORK if network else ())):
        if os.path.exists(f"/etc/{name}"):  # checked once: a missing one costs no mount try
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return tuple(argv)


@functools.lru_cache(maxsize=256)
def interpreter_prefix(env: str) -> str:
    """The installation of the interpreter an environment was built from (its ``home``'s parent)."""
    home = _pyvenv_home(Path(env) / "pyvenv.cfg")
    if not home:
        return ""
    return str(Path(home).resolve().parent)


def _pyvenv_home(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    values: Mapping[str, str] = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in lines)
    )
    return values.get("home", "")
