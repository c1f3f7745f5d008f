"""A task's limits, applied by its supervisor around the module (standard library only).

The server decides the limits and where they can be enforced (``sandbox.py``); the spec
carries them as ``limits``: ``memory_mb``, ``cpu_seconds``, ``output_mb``, ``processes``
(0 = none), ``memory_cgroup`` and ``pids_cgroup`` (the cgroup v1 folders to nest the task's
own groups in, or empty) and ``overhead`` (the processes of the supervisor and the sandbox,
added to the process limit).

- Memory and processes: the supervisor makes a cgroup per task below the given folders and
  joins it before it starts the module, which inherits it (a process cannot be put into a
  cgroup between posix_spawn's fork and exec, and joining afterwards would race with the
  module's first fork). The kernel then counts everything the task's tree uses, its private
  ``/tmp`` (a tmpfs) included. Without a memory cgroup, ``RLIMIT_DATA`` (not ``RLIMIT_AS``,
  which fails runtimes that reserve address space they never use).
  Joining a cgroup can wait for a whole RCU grace period (about 11 ms on the 2-core test
  machine, more under load): the kernel makes every migration wait until no fork can be
  half-way. So a supervisor forked ahead of need (``launcher.py``) makes and joins the groups
  the server's own limits call for while it waits (:func:`prepare`), and the task's start
  only writes the values.
- CPU time: ``RLIMIT_CPU``, per process as the kernel counts it.
- Output: ``RLIMIT_FSIZE`` stops any single file at the limit at once; the supervisor adds up
  everything the task wrote (output folder and logs) every 5 ms while it grows (less often
  while it does not, or when the sum takes long) and stops the task when the total crosses
  the limit: a fast writer can go past it by what it writes in that time.
The rlimits are set on the supervisor just before the spawn, so the module inherits them,
and taken back right after where the supervisor may (root), since they would bind it too.
"""

from __future__ import annotations

import os
import resource
import signal
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MB = 1024 * 1024
LIMIT_KEYS = ("memory_mb", "cpu_seconds", "output_mb", "processes")  # as in manifest.py
# seconds between two sums of what a task with an output limit wrote: often while it grows,
# less and less often while it does not, and never costing the supervisor over a tenth of a
# core (a sum over many files takes longer)
WATCH_MIN, WATCH_MAX = 0.005, 1.0
_CPU_MARGIN = 2  # seconds between SIGXCPU (which a process may catch) and SIGKILL
_MEMORY_ERROR_TAIL = 4096  # bytes of standard error looked at for a MemoryError
_PREFIX = "orchestra-task-"  # the name of a task's cgroups: prefix, supervisor pid, time
# a group can stay busy for a moment after its end; removal happens after the task's end is
# reported, so waiting up to two seconds holds nothing up
_REMOVE_TRIES, _REMOVE_PAUSE = 200, 0.01
_STALE_AFTER = 60.0  # seconds after which a leftover group is swept (it is not starting)
_DISK_FULL_BYTES = MB  # free space under which a failed task is said to have filled the disk


def message(name: str, value: int) -> str:
    """The error of a task that crossed limit ``name`` of ``value``."""
    if name == "memory_mb":
        return f"memory limit of {value} MB exceeded"
    if name == "cpu_seconds":
        return f"CPU time limit of {value} s exceeded"
    if name == "output_mb":
        return f"output limit of {value} MB exceeded (all files together)"
    return f"process limit of {value} exceeded (processes and threads)"


class _Group:
    """One cgroup v1 folder made for this task below ``base``, which this process joins."""

    def __init__(self, base: str) -> None:
        self.base = base
        # pid and time: a group left behind never has the name of a later one
        self.path = os.path.join(base, f"{_PREFIX}{os.getpid()}-{time.time_ns()}")

    def create(self) -> None:
        """Make the group and move this process into it."""
        _sweep(self.base)
        os.mkdir(self.path)
        try:
            _write(os.path.join(self.path, "cgroup.procs"), str(os.getpid()))
        except OSError:
            self.remove()
            raise

    def configure(self, settings: dict[str, int]) -> None:
        """Write ``settings`` (file name: value) into the group."""
        try:
            for name, value in settings.items():
                _write(os.path.join(self.path, name), str(value))
        except OSError:
            self.remove()
            raise

    def read(self, name: str) -> dict[str, int]:
        """A flat-keyed cgroup file (``key value`` lines) as a dict."""
        try:
            with open(os.path.join(self.path, name), encoding="ascii") as handle:
                pairs = (line.split() for line in handle)
                return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}
        except OSError:
            return {}

    def remove(self) -> None:
        """Move this process back to the parent group and remove this one."""
        try:
            _write(os.path.join(self.base, "cgroup.procs"), str(os.getpid()))
        except OSError:
            pass
        for _ in range(_REMOVE_TRIES):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY: the sandbox's last process is still being torn down
                time.sleep(_REMOVE_PAUSE)
        # left for a later supervisor's sweep, once empty


# groups this process made and joined ahead of its task, by the folder they are in
_READY: dict[str, _Group] = {}


def prepare(bases: list[str]) -> None:
    """Make and join a group below each of ``bases`` now, for the task still to come."""
    for base in bases:
        group = _Group(base)
        try:
            group.create()
        except OSError:
            continue  # the task's start tries again, and says why if it fails then too
        _READY[base] = group


def has_prepared() -> bool:
    """True while groups made ahead wait for a task."""
    return bool(_READY)


def release() -> None:
    """Leave and remove the groups made ahead, when no task came for them."""
    while _READY:
        _READY.popitem()[1].remove()


def _joined(base: str, ready: dict[str, _Group]) -> _Group:
    """The group made ahead below ``base`` (taken from ``ready``), or one made and joined now."""
    group = ready.pop(base, None)
    if group is None:
        group = _Group(base)
        group.create()
    return group


def _sweep(base: str) -> None:
    """Remove the empty groups earlier tasks left behind (old enough not to be starting)."""
    horizon = time.time() - _STALE_AFTER
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(_PREFIX)]
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat().st_mtime < horizon:
                os.rmdir(entry.path)  # refused while a process is in it
        except OSError:
            pass


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Guard:
    """The limits of one task: set up before its start, watched, read after its end."""

    def __init__(self, limits: dict[str, Any], task_dir: str) -> None:
        self.values = {key: int(limits.get(key) or 0) for key in LIMIT_KEYS}
        self.task_dir = task_dir
        self._memory_base = str(limits.get("memory_cgroup") or "")
        self._pids_base = str(limits.get("pids_cgroup") or "")
        self._overhead = int(limits.get("overhead") or 0)
        self._groups: dict[str, _Group] = {}
        self._saved: list[tuple[int, tuple[int, int]]] = []
        self.crossed: str | None = None  # the limit the watcher saw crossed
        self._interval = WATCH_MIN
        self._last = 0  # bytes written at the last check

    @property
    def interval(self) -> float | None:
        """Seconds between two calls of :meth:`check`, or None when nothing needs watching."""
        return self._interval if self.values["output_mb"] else None

    def enter(self) -> None:
        """Be in the task's cgroups with its limits written, and set the module's rlimits.

        The groups made ahead (:func:`prepare`) are taken; one this process is not in yet is
        made and joined now.
        """
        memory, processes = self.values["memory_mb"], self.values["processes"]
        ready = dict(_READY)
        _READY.clear()
        try:
            if memory and self._memory_base:
                group = self._groups["memory"] = _joined(self._memory_base, ready)
                settings = {"memory.limit_in_bytes": memory * MB}
                if os.path.exists(os.path.join(self._memory_base, "memory.memsw.limit_in_bytes")):
                    settings["memory.memsw.limit_in_bytes"] = memory * MB  # no escape into swap
                group.configure(settings)
            if processes and self._pids_base:
                group = self._groups["pids"] = _joined(self._pids_base, ready)
                group.configure({"pids.max": processes + self._overhead})
        finally:
            # one made ahead that this task sets no limit in stays unlimited, removed at the end
            self._groups.update((f"unused {base}", group) for base, group in ready.items())
        self.arm()

    def arm(self) -> None:
        """Set the rlimits the module inherits when this process spawns it."""
        memory = self.values["memory_mb"]
        if memory and not self._memory_base:
            self._set(resource.RLIMIT_DATA, memory * MB, memory * MB)
        if self.values["cpu_seconds"]:
            cpu = self.values["cpu_seconds"]
            self._set(resource.RLIMIT_CPU, cpu, cpu + _CPU_MARGIN)
        if self.values["output_mb"]:
            size = self.values["output_mb"] * MB
            self._set(resource.RLIMIT_FSIZE, size, size)

    def _set(self, which: int, soft: int, hard: int) -> None:
        old = resource.getrlimit(which)
        resource.setrlimit(which, (soft, hard))
        self._saved.append((which, old))

    def spawned(self) -> None:
        """Take this process's own rlimits back where it may (the module keeps its copy)."""
        saved, self._saved = self._saved, []
        for which, old in saved:
            try:
                resource.setrlimit(which, old)
            except (OSError, ValueError):
                pass  # not root: the supervisor stays within them, it uses next to nothing

    def check(self) -> bool:
        """True when the task has written more than its output limit, all files together."""
        limit = self.values["output_mb"] * MB
        began = time.monotonic()
        total = written(self.task_dir)
        if total > limit:
            self.crossed = "output_mb"
        cost = 10 * (time.monotonic() - began)
        pace = WATCH_MIN if total != self._last else min(WATCH_MAX, 2 * self._interval)
        self._interval, self._last = max(pace, cost), total
        return self.crossed is not None

    def verdict(self, status: int | None) -> str | None:
        """The limit that ended the task (``status``: the module's wait status), or None."""
        if self.crossed:
            return self.crossed
        if status is not None and os.waitstatus_to_exitcode(status) == 0:
            return None
        if self._groups.get("memory") and self._groups["memory"].read("memory.oom_control").get(
            "oom_kill"
        ):
            return "memory_mb"
        if self._groups.get("pids") and self._groups["pids"].read("pids.events").get("max"):
            return "processes"
        return self._verdict_from_usage(status)

    def _verdict_from_usage(self, status: int | None) -> str | None:
        cpu = self.values["cpu_seconds"]
        if cpu:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            if used.ru_utime + used.ru_stime >= cpu - 0.05 or _signalled_xcpu(status):
                return "cpu_seconds"
        output = self.values["output_mb"] * MB
        if output and written(self.task_dir) >= output:
            return "output_mb"  # a file stopped at RLIMIT_FSIZE: the module failed on it
        if self.values["memory_mb"] and not self._memory_base and _memory_error(self.task_dir):
            return "memory_mb"
        return None

    @property
    def holds_groups(self) -> bool:
        """True when this process is in cgroups of the task's, to be left and removed."""
        return bool(self._groups)

    def leave(self) -> None:
        """Leave and remove the task's cgroups (the task has ended)."""
        for group in self._groups.values():
            group.remove()
        self._groups.clear()


def _signalled_xcpu(status: int | None) -> bool:
    """True when the module died of SIGXCPU (bubblewrap passes it on as 128 + the signal)."""
    if status is None:
        return False
    code = os.waitstatus_to_exitcode(status)
    return code in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def written(task_dir: str) -> int:
    """Bytes the task wrote: its output folder and its logs (the larger of size and blocks)."""
    total = 0
    for name in ("stdout.log", "stderr.log"):
        try:
            total += _used(os.stat(os.path.join(task_dir, name)))
        except OSError:
            pass
    return total + _folder_size(os.path.join(task_dir, "output"))


def _used(stat: os.stat_result) -> int:
    # sparse files count as large as they read, so that a download cannot exceed the limit
    return max(stat.st_size, stat.st_blocks * 512)


def _folder_size(folder: str) -> int:
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _folder_size(entry.path)
            else:
                total += _used(entry.stat(follow_symlinks=False))
        except OSError:
            pass
    return total


def _memory_error(task_dir: str) -> bool:
    try:
        with open(os.path.join(task_dir, "stderr.log"), "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - _MEMORY_ERROR_TAIL))
            return b"MemoryError" in handle.read()
    except OSError:
        return False


def disk_full(task_dir: str) -> bool:
    """True when the disk of ``task_dir`` has (next to) no space left."""
    try:
        stat = os.statvfs(task_dir)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _DISK_FULL_BYTES
