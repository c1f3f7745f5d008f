"""Process identity and process trees read from /proc (standard library only).

The supervisor imports this file by path, without the ``orchestra`` package, so it must not
import anything from Orchestra.
"""

from __future__ import annotations

import os
import signal


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it is gone."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])


def alive_since(pid: int, moment: float) -> bool:
    """Whether ``pid`` runs and had started by ``moment`` (epoch seconds): not a reused pid."""
    ticks = start_time(pid) if pid > 0 else None
    if ticks is None:
        return False
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK") <= moment + 1.0


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def is_alive(pid: int, start: int | None) -> bool:
    """True while the process ``pid`` runs and is the one that started at ``start``."""
    if pid <= 0:
        return False
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _children(pid: int) -> list[int] | None:
    """Direct children from /proc/<pid>/task/*/children; None when the kernel lacks it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(p) for p in handle.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # CONFIG_PROC_CHILDREN is off
        except OSError:
            continue
    return found


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (not ``root`` itself)."""
    first = _children(root)
    if first is None:  # no children files: scan every process once
        children = _children_map()
        first = children.get(root, [])
        expand = lambda pid: children.get(pid, [])  # noqa: E731
    else:
        expand = lambda pid: _children(pid) or []  # noqa: E731
    found: list[int] = []
    stack = list(first)
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(expand(pid))
    return found


def signal_tree(root: int, group: int | None, sig: int, *, include_root: bool = False) -> int:
    """Send ``sig`` to process group ``group`` and every descendant of ``root``; count them."""
    sent = 0
    if group is not None and group > 0:
        try:
            os.killpg(group, sig)
            sent += 1
        except OSError:
            pass
    targets = descendants(root) + ([root] if include_root else [])
    for pid in targets:
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def kill_tree_direct(pid: int, start: int | None, grace: float) -> None:
    """Stop a process and what runs below it when no supervisor is there to do it."""
    import time

    if not is_alive(pid, start):
        return
    # remember the tree first: once ``pid`` dies its children move to another parent
    tree = {p: start_time(p) for p in [pid, *descendants(pid)]}
    signal_tree(pid, pid, signal.SIGTERM, include_root=True)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(p, s) for p, s in tree.items()):
        time.sleep(0.02)
    signal_tree(pid, pid, signal.SIGKILL, include_root=True)
    for member, member_start in tree.items():
        if is_alive(member, member_start):
            try:
                os.kill(member, signal.SIGKILL)
            except OSError:
                pass
