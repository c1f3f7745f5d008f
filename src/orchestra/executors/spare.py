"""A spare interpreter: imports a module's stack ahead of its task, then runs that one task.

Standard library only. Run as ``python spare.py SPARE_OUTPUT [NAME ...]`` by a supervisor
that has no task yet (``warmstart.py``), in the sandbox and the limits a cold task
of the module would get, with its output folder bound at SPARE_OUTPUT. It imports the names
(what an earlier cold run of the module imported), says ``ready`` on descriptor 4, and reads
its task on descriptor 3: ``{"argv", "env", "cwd"}``, where ``argv`` is what follows
``python -m``. It then runs the module as ``python -m`` would, in this same process, which
ends with it: one interpreter, one task, so that no task ever starts from another's state.
The end of descriptor 3 without a task means it is not needed: it exits.
"""

import os
import sys


def _prepare() -> None:
    import importlib

    # the module's own files are not imported ahead (their top level may read arguments),
    # nor this program's folder, which Python put first on the path
    del sys.path[0]
    for name in sys.argv[2:]:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: B036 - what fails to import is imported by the task
            pass
    # what the imports made lives as long as the process: no collection need look at it
    # again, the last one at the exit included (a quarter of a second for pandas and
    # scikit-learn, more than the task itself)
    freeze = getattr(__import__("gc"), "freeze", None)  # Python 3.7 and later
    if freeze is not None:
        freeze()
    try:
        os.write(4, b"ready\n")
        os.close(4)
    except OSError:
        pass


def _task() -> dict:  # type: ignore[type-arg]
    import json

    chunks = []
    chunk = os.read(3, 1 << 16)
    while chunk:  # no assignment expression: environments may be older than Python 3.8
        chunks.append(chunk)
        chunk = os.read(3, 1 << 16)
    os.close(3)
    if not chunks:
        os._exit(0)
    return dict(json.loads(b"".join(chunks)))


def _enter(task: dict, spare_output: str) -> None:  # type: ignore[type-arg]
    """Take the task's place: its output path, environment, folder, argv and import path."""
    output = task["argv"][1]
    if not os.path.exists(output):  # in the sandbox: the task's path leads to the bound folder
        os.makedirs(os.path.dirname(os.path.dirname(output)), exist_ok=True)
        os.symlink(os.path.dirname(spare_output), os.path.dirname(output))
    os.environ.clear()
    os.environ.update(task["env"])
    os.chdir(task["cwd"])
    sys.argv = list(task["argv"])
    sys.path.insert(0, os.getcwd())  # as ``python -m`` puts its working directory first


def _main() -> str:
    spare_output = sys.argv[1]
    _prepare()
    task = _task()
    _enter(task, spare_output)
    # the module runs in this program's namespace, as ``python -m`` runs it in ``__main__``'s:
    # nothing of this program is left there
    for name in [n for n in globals() if not n.startswith("__")]:
        del globals()[name]
    return str(task["argv"][0])


__import__("runpy")._run_module_as_main(_main())
