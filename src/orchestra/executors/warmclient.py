"""The supervisor's side of a warm start (standard library only): one task through a fork server.

The supervisor hands the task to its module's fork server (``forkserver.py``) over the fork
server's socket: the output folder as a detached mount (``open_tree``, so that only that one
folder can be attached inside the task's namespace), its two logs, the argv tail and the
environment. The task's first process answers with its pid in its credentials, which the
kernel translates into the supervisor's pid namespace; the supervisor puts that pid into the
task's cgroups and gives it the task's rlimits (a forked process starts with no CPU time used)
before it says ``go``. The module's wait status comes back on the same connection.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SYS_OPEN_TREE = 428
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 0x1, 0o2000000
_AT_FDCWD = -100
_HANDSHAKE_TIMEOUT = 10.0  # seconds the fork server may take to make the task's namespaces
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class WarmTask:
    """A task started by a fork server: its first process's host pid and its connection."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self._buffer = b""
        self.said = ""  # what the fork server said instead of a status, if anything

    def fileno(self) -> int:
        """The connection, for select."""
        return self.conn.fileno()

    def status(self) -> int | None:
        """The module's wait status once it has ended (SIGKILL's when the task vanished)."""
        try:
            chunk = self.conn.recv(256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            chunk = b""
        self._buffer += chunk
        if self._buffer.startswith(b"status ") and self._buffer.endswith(b"\n"):
            return int(self._buffer.split()[1])
        if not chunk:  # closed without a status: the task's first process was killed
            self.said = self._buffer.decode("utf-8", "replace")[:2000]
            return 9
        return None

    def close(self) -> None:
        """Forget the connection."""
        self.conn.close()


def _open_tree(path: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
    fd = int(libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, path.encode(), flags))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"open_tree {path}: {os.strerror(errno)}")
    return fd


def start(spec: dict[str, Any], task_dir: str, place: Any) -> WarmTask:
    """Start the task through its fork server; ``place(pid)`` puts it in its limits.

    OSError when the fork server cannot take it: the supervisor then starts it cold.
    """
    warm = spec["warm"]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    conn.settimeout(_HANDSHAKE_TIMEOUT)
    fds: list[int] = []
    try:
        conn.connect(warm["socket"])
        fds.append(_open_tree(warm["output"]))
        for name in ("stdout.log", "stderr.log"):
            fds.append(os.open(os.path.join(task_dir, name), _LOG_FLAGS, 0o644))
        request = {"output": warm["output"], "cwd": spec["cwd"], "env": spec["env"],
                   "executable": warm["executable"], "argv": warm["argv"]}  # fmt: skip
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))
        conn.sendmsg([json.dumps(request).encode()], [rights])
    except BaseException:
        conn.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    try:
        pid = _pid_of_first(conn)
        place(pid)
        conn.sendall(b"go\n")
    except BaseException:
        conn.close()  # the task's first process sees the end of the connection and exits
        raise
    conn.settimeout(None)
    return WarmTask(conn, pid)


def _pid_of_first(conn: socket.socket) -> int:
    """The host pid of the task's first process, from the credentials it sent."""
    data, ancillary, _flags, _addr = conn.recvmsg(256, socket.CMSG_SPACE(12))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and data == b"pid\n":
            pid = struct.unpack("3i", payload[:12])[0]
            if pid > 0:
                return int(pid)
    raise OSError(f"the fork server did not start the task: {data[:200]!r}")


def limit(pid: int, rlimits: list[tuple[int, tuple[int, int]]]) -> None:
    """Give ``pid`` the rlimits (which, (soft, hard)) a cold task would inherit."""
    for which, values in rlimits:
        resource.prlimit(pid, which, values)
