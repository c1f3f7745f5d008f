"""A warm interpreter: imports a module's stack once, then forks one isolated child per task.

Standard library only; run inside bubblewrap with the module's environment interpreter as
``python -s forkserver.py SOCKET TASKS_DIR KEEP[:KEEP…] [IMPORT ...]`` (see ``warm.py`` and the
"Warm starts" section of docs/architecture.md). It has no capability and sees nothing of the
data folder but its socket's folder. It imports the names given (what earlier cold runs of the
module imported), refuses to serve if that started a thread or a process (``threads`` on its
standard output, PITFALLS 22), else says ``ready`` and answers connections on SOCKET.

Per connection (one task): a JSON request and three descriptors (the task's output folder as a
detached mount from ``open_tree``, its two logs). The fork server forks a child that makes
new user, mount and pid namespaces, mounts a fresh ``/tmp``, hides every other task behind a
tmpfs on TASKS_DIR, attaches the output folder at its path, covers ``/proc`` and forks the
task's first process (pid 1 of the new pid namespace). That process drops every capability,
sends its pid with its credentials (the supervisor reads it as the host sees it, to place it
in the task's cgroups and set its rlimits), waits for ``go``, then forks the module's process,
which runs the module as ``python -m`` would. The child reports the module's wait status.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MNT_DETACH = 2
KEEP = "/orchestra-keep"  # an empty mount point: where binds wait while /tmp is renewed
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
_SYS_MOVE_MOUNT = 429  # x86_64 and aarch64 alike
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_CAP_LAST = 63
_UID = 1000  # the fork server's uid in its namespace: mapping uid 0 would need CAP_SETFCAP
_REQUEST_BYTES = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, kind: str, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), kind.encode(), flags, data.encode()),
        f"mount {target}",
    )


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:  # closing it writes, or raises
        handle.write(text)


def _namespaces(tasks_dir: str, output: str, tree: int, keep: list[str]) -> None:
    """New user, mount and pid namespaces: own /tmp, own output folder, no other task."""
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{_UID} {_UID} 1")
    _write("/proc/self/gid_map", f"{_UID} {_UID} 1")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    _fresh_tmp(keep)
    # a data folder below /tmp: its tasks folder is made again on the task's own /tmp, where a
    # cold task's sandbox has it too
    os.makedirs(tasks_dir, exist_ok=True)
    _mount("tmpfs", tasks_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    os.makedirs(output)
    path = output.encode()
    _check(
        _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, path, _MOVE_MOUNT_F_EMPTY_PATH),
        "move_mount",
    )
    os.close(tree)
    # the sandbox's /proc shows the fork server's pid namespace (other tasks): none at all
    _mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=555")


def _fresh_tmp(keep: list[str]) -> None:
    """A new, empty /tmp, with the sandbox's binds below it (the generation, the interpreter)
    put back where they were: a data folder may be below /tmp."""
    below = [path for path in keep if path.startswith("/tmp/")]
    if below:
        _mount("tmpfs", KEEP, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
    for index, path in enumerate(below):
        os.mkdir(f"{KEEP}/{index}")
        # a bind of a read-only bind stays read-only: its lock came from the sandbox's namespace
        _mount(path, f"{KEEP}/{index}", "", MS_BIND | MS_REC)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for index, path in enumerate(below):
        os.makedirs(path)
        _mount(f"{KEEP}/{index}", path, "", MS_BIND | MS_REC)
    if below:
        _check(_libc.umount2(KEEP.encode(), MNT_DETACH), "umount")


def _drop_capabilities() -> None:
    """No capability left, in any set, and none to be gained (PITFALLS 23)."""
    for cap in range(_CAP_LAST + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last: fine

    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]  # fmt: skip

    header, data = _Header(0x20080522, 0), (_Data * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _module(request: dict[str, Any], out: int, err: int) -> None:
    """The module's process: its streams, directory, argv and environment; never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["executable"], *request["argv"]]
        sys.path[0] = request["cwd"]  # as ``python -m`` puts its working directory first
        code = _run_main(request["executable"])
    except BaseException as exc:
        os.write(err, f"orchestra: the warm start failed: {exc!r}\n".encode())
    finally:
        os._exit(code)


def _run_main(executable: str) -> int:
    """Run the module as ``python -m`` does, then what an interpreter's exit runs."""
    import runpy
    import traceback

    try:
        runpy._run_module_as_main(executable, alter_argv=True)  # type: ignore[attr-defined]
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads first
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr, flush=True)
    return 1


def _first(conn: socket.socket, request: dict[str, Any], out: int, err: int) -> None:
    """The task's first process (pid 1 of its namespace): waits for go, runs, reports."""
    _drop_capabilities()
    conn.sendmsg([b"pid\n"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                               _credentials())])  # fmt: skip
    if conn.recv(16) != b"go\n":
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _module(request, out, err)
    os.close(out)
    os.close(err)
    # pid 1 ignores signals without a handler: pass a stop on to every process of the task
    signal.signal(signal.SIGTERM, lambda *_: os.kill(-1, signal.SIGTERM))
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            break
    conn.sendall(f"status {status}\n".encode())
    os._exit(0)  # the kernel ends whatever else the task left in its namespace


def _credentials() -> bytes:
    import struct

    return struct.pack("3i", os.getpid(), os.getuid(), os.getgid())


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """The forked child for one task: namespaces, then the task's first process."""
    code = 1
    try:
        # the fork server lets the kernel reap its children; this one waits for its own
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        tree, out, err = fds
        _namespaces(request["tasks_dir"], request["output"], tree, request["keep"])
        pid = os.fork()
        if pid == 0:
            _first(conn, request, out, err)
        os.close(out)
        os.close(err)
        conn.close()
        os.waitpid(pid, 0)
        code = 0
    except BaseException as exc:
        try:
            conn.sendall(f"error {exc!r}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, ancillary, _flags, _addr = conn.recvmsg(_REQUEST_BYTES, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(memoryview(payload).cast("i"))
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a task needs three descriptors")
    return json.loads(data), fds


def serve(path: str, tasks_dir: str, keep: list[str], imports: list[str]) -> None:
    """Import, check, then fork a child per connection until the socket is closed."""
    import importlib

    # the module's own code folder is not on the path: only its environment's packages (and
    # the standard library) are imported ahead, never its own files, whose top level may
    # read its arguments
    for name in imports:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: B036 - what fails to import is imported by the task
            pass
    if threading.active_count() > 1 or _others_in_sandbox():
        print("threads", flush=True)
        os._exit(3)
    # what the imports made stays in the pages every child shares, never collected there
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 512):
            _retire(listener)
        conn, _ = listener.accept()
        try:
            request, fds = _receive(conn)
            request["tasks_dir"], request["keep"] = tasks_dir, keep
        except (OSError, ValueError):
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _child(conn, request, fds)
        for fd in fds:
            os.close(fd)
        conn.close()


def _retire(listener: socket.socket) -> None:
    """Take no more tasks; exit once the running ones have ended (they outlive the server)."""
    listener.close()
    while _has_children():
        time.sleep(0.5)
    os._exit(0)


def _others_in_sandbox() -> bool:
    """Whether a process other than this one (the sandbox's first) runs in the sandbox: one
    started by an import (a double fork included, which is no child of ours)."""
    try:
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    except OSError:
        return True
    return bool(pids - {os.getpid()})


def _has_children() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG) is not None
    except ChildProcessError:
        return False


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], [p for p in sys.argv[3].split(":") if p], sys.argv[4:])
