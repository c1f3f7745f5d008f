"""The executor interface: where and how a task's process runs, nothing about its status.

A task's status lives in the database and only ``tasks.lifecycle`` writes it. An executor
is told about tasks through a ``TaskSpec``, which names the module generation and the
arguments, never a path of the server's: the side that runs the task resolves them in its
own data folder (the server's, or a worker's on another machine).

Two kinds fit behind ``get_executor(settings)``:

- an executor that **runs tasks here** (``runs_here`` true: local). The server claims a
  queued task under ``ORCHESTRA_MAX_RUNNING`` (``lifecycle.claim_next``), then ``start``s it;
  the executor watches the process and hands the runner an ``Outcome`` to record.
- an executor whose tasks **run elsewhere** (``runs_here`` false: workers). The server only
  inserts the queued row and ``send``s the spec. A worker claims the row for itself
  (``lifecycle.claim``: queued -> running under its name, refused once killed), runs it,
  renews its lease (``tasks.workers.renew``, which also names the tasks to kill), and
  records the outcome itself (``lifecycle.finish(..., worker=name)``). The server's sweep
  settles tasks whose lease ran out (``lifecycle.settle_lost``).

A kill is always the database flag first (``lifecycle.request_kill``), then
``signal_kill`` as a prompt signal to whoever runs the task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from orchestra.tasks.status import Outcome

Handle = dict[str, Any]  # JSON-ready identity of a started job (local: the supervisor's pid)


@dataclass(frozen=True)
class TaskSpec:
    """What a task runs, in terms that any machine holding the module can resolve."""

    task_id: int
    module_id: int
    generation: str  # the installed generation: installs/<generation>/{code,env}
    executable: str  # run as ``python -m <executable> <output_dir> <args...>``
    args: tuple[str, ...]  # the argv tail after the output folder: --name value ...
    timeout: float  # seconds
    grace: float  # seconds between SIGTERM and SIGKILL
    outputs: tuple[str, ...] | None = None  # the declared output files, if any
    queue: str = "default"  # where a remote executor sends it (install.queue)
    # a catalog's or time table's header facts (catalogs.header_facts), for the side that
    # finishes its outputs; None for other outputs
    catalog: Mapping[str, Any] | None = None
    network: bool = False  # the module's ``network``: whether its sandbox lets it out
    limits: Mapping[str, int] | None = None  # the module's own ``limits`` (memory_mb, ...)
    kind: str = "run"  # run, or train: its output folder is the model folder
    # the model version given read-only ({module_id, version, digest}): a run's model, or a
    # training's base
    model: Mapping[str, Any] | None = None
    warm: bool = True  # the module's ``install.warm``: whether it may start warm

    def to_json(self) -> dict[str, Any]:
        """The form kept in the task row's ``spec`` column."""
        return {
            "task_id": self.task_id, "module_id": self.module_id,
            "generation": self.generation, "executable": self.executable,
            "args": list(self.args), "timeout": self.timeout, "grace": self.grace,
            "outputs": list(self.outputs) if self.outputs is not None else None,
            "queue": self.queue, "catalog": dict(self.catalog) if self.catalog else None,
            "network": self.network, "limits": dict(self.limits) if self.limits else None,
            "kind": self.kind, "model": dict(self.model) if self.model else None,
            "warm": self.warm,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        """The spec from its stored form (or the first release's); ValueError for anything else."""
        if "argv" in data and "generation" not in data:
            return cls._from_first_release(data)
        try:
            outputs = data.get("outputs")
            return cls(
                task_id=int(data["task_id"]), module_id=int(data["module_id"]),
                generation=str(data["generation"]), executable=str(data["executable"]),
                args=tuple(str(a) for a in data["args"]), timeout=float(data["timeout"]),
                grace=float(data["grace"]),
                outputs=tuple(str(o) for o in outputs) if outputs is not None else None,
                queue=str(data.get("queue") or "default"), catalog=data.get("catalog"),
                network=bool(data.get("network", False)), limits=data.get("limits"),
                kind=str(data.get("kind") or "run"), model=data.get("model"),
                warm=bool(data.get("warm", True)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a task spec: {exc}") from exc

    @classmethod
    def _from_first_release(cls, data: Mapping[str, Any]) -> TaskSpec:
        """A spec the first release stored with its paths resolved at submit time.

        Its argv is ``<installs>/<generation>/env/bin/python -m <executable> <output> <tail>``
        and its cwd ``<installs>/<generation>/code``: the names are kept, the paths dropped, so
        a queued task of that release still starts once the data folder has moved.
        """
        try:
            argv = [str(a) for a in data["argv"]]
            if len(argv) < 4 or argv[1] != "-m":
                raise ValueError(f"unexpected argv {argv[:3]}")
            outputs = data.get("outputs")
            return cls(
                task_id=int(data["task_id"]), module_id=int(data.get("module_id") or 0),
                generation=PurePosixPath(str(data["cwd"])).parent.name, executable=argv[2],
                args=tuple(argv[4:]), timeout=float(data["timeout"]),
                grace=float(data["grace"]),
                outputs=tuple(str(o) for o in outputs) if outputs is not None else None,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a task spec of the first release: {exc}") from exc


class Executor(Protocol):
    """What the task runner needs of any executor."""

    name: str  # recorded in the task row's ``executor`` column
    runs_here: bool  # True: this process starts claimed tasks; False: remote workers do

    def open(self) -> None:
        """Start background helpers (a server is running)."""
        ...

    def close(self) -> None:
        """Stop background helpers; tasks go on."""
        ...

    def send(self, spec: TaskSpec) -> None:
        """Hand a queued task to whoever will claim and run it (remote executors)."""
        ...

    def signal_kill(self, task_id: int, worker: str | None) -> None:
        """Prompt whoever runs the task to stop it now (its kill flag is already set)."""
        ...

    def reconcile(self) -> None:
        """Periodic repair from the database, the truth (e.g. resend what the broker lost)."""
        ...


class LocalRuns(Executor, Protocol):
    """The part of an executor that runs tasks on this machine (``runs_here``)."""

    def start(self, spec: Mapping[str, Any]) -> Handle:
        """Start a claimed task from its stored spec; its handle. OSError when it cannot."""
        ...

    def find(self, task_id: int) -> Handle | None:
        """The handle of the job started for the task, from what the job itself recorded."""
        ...

    def is_alive(self, handle: Handle) -> bool:
        """True while the job behind ``handle`` has not ended."""
        ...

    def kill(self, handle: Handle) -> None:
        """Stop the job's whole process tree (SIGTERM, then SIGKILL after the grace period)."""
        ...

    def watch(self, handle: Handle, on_exit: Callable[[], None]) -> bool:
        """Call ``on_exit`` once when the job ends; False when this executor cannot watch."""
        ...

    def outcome(self, task_id: int, spec: Mapping[str, Any]) -> Outcome | None:
        """How the task ended, from what its job left; None while it has left nothing."""
        ...

    def orphan_outcome(self, task_id: int, handle: Handle | None, kill_requested: bool) -> Outcome:
        """The outcome of a task whose job is gone without leaving one."""
        ...

    def spares(self) -> dict[str, int]:
        """How many spare interpreters (warm starts) are ready and how many are starting."""
        ...
