"""Try each escape; report.json maps each to "allowed: ..." or "denied: <the error>"."""

import json
import os
import socket
import sys


def connect(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as sock:
        return sock.recv(16).decode()


def read_database(path):
    with open(path, "rb") as handle:
        return f"{len(handle.read(100))} bytes"


def write_own_code(_):
    path = os.path.join(os.getcwd(), "Model", "planted.py")
    with open(path, "w") as handle:
        handle.write("print('planted')\n")
    return path


def write_other_output(folder):
    path = os.path.join(folder, "planted.txt")
    with open(path, "w") as handle:
        handle.write("planted\n")
    return path


def read_server_environment(pid):
    with open(f"/proc/{pid}/environ", "rb") as handle:
        found = [v for v in handle.read().split(b"\0") if v.startswith(b"ORCHESTRA_API_TOKEN=")]
    if not found:
        raise LookupError("readable, but no token in it")
    return "the token"


def own_environment(_):
    found = sorted(k for k in os.environ if k.startswith("ORCHESTRA_") and k != "ORCHESTRA_TASK_ID")
    if found:
        return ", ".join(found)
    raise LookupError("no ORCHESTRA_* setting in its environment")


def list_data_folder(home):
    # its own code, environment and output are meant to be there: anything else is not
    own = (os.path.dirname(os.getcwd()), os.path.realpath(sys.argv[1]))
    seen = []
    for root, _folders, files in os.walk(home):
        paths = [os.path.join(root, f) for f in files]
        seen += [os.path.relpath(p, home) for p in paths if not p.startswith(own)]
    if not seen:
        raise LookupError("nothing of the data folder in sight beyond its own files")
    return seen


CHECKS = {
    "connect": ("port", connect),
    "read_database": ("database", read_database),
    "write_own_code": ("port", write_own_code),
    "write_other_output": ("other_output", write_other_output),
    "read_server_environment": ("server_pid", read_server_environment),
    "own_environment": ("port", own_environment),
    "list_data_folder": ("home", list_data_folder),
}


def main():
    out = sys.argv[1]
    opts = {k.lstrip("-"): v for k, v in zip(sys.argv[2::2], sys.argv[3::2], strict=True)}
    report = {}
    for name, (arg, check) in CHECKS.items():
        try:
            report[name] = f"allowed: {check(opts.get(arg, ''))}"
        except Exception as exc:
            report[name] = f"denied: {type(exc).__name__}: {exc}"
    with open(os.path.join(out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=1)


main()
