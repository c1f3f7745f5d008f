"""A run or training request read against what its module declares.

The request options (``model`` for runs; ``base`` and ``promote`` for trainings) are taken
out before the arguments are bound: they are never passed to the module. A module without
``train`` is read exactly as before versions existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestra.errors import InvalidInput, WrongState
from orchestra.manifest import Manifest, bind_arguments
from orchestra.models import versions

if TYPE_CHECKING:
    from orchestra.tasks.submitting import Submitter

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Request:
    """A checked request: the module's arguments, its timeout and the version it is given."""

    bound: dict[str, str]
    timeout: float
    model: tuple[int, str] | None = None  # number and digest of the version it reads
    overrides: dict[str, Any] = field(default_factory=dict)  # TaskSpec fields for its kind
    extra: dict[str, Any] = field(default_factory=dict)  # kept in the spec besides TaskSpec's
    header: dict[str, Any] | None = None  # the model named in a catalog's header


def run(
    submitter: Submitter, module_id: int, manifest: Manifest, args: Mapping[str, Any]
) -> Request:
    """A run: arguments bound; a trained module's version resolved now."""
    settings = submitter.settings
    timeout = manifest.timeout or settings.task_timeout
    if manifest.train is None:
        bound = bind_arguments(manifest, args, max_length=settings.max_arg_length)
        return Request(bound, timeout)
    rest = dict(args)
    ref = rest.pop("model", None)
    bound = bind_arguments(manifest, rest, max_length=settings.max_arg_length)
    found = versions.resolve(submitter.db, module_id, ref, "model")
    if found is None:
        if manifest.model_required:
            raise WrongState(f"module {module_id} has no model version yet: train it first")
        return Request(bound, timeout)
    header = {"version": found.version, "digest": found.digest, "task": found.task}
    return Request(bound, timeout, (found.version, found.digest), header=header)


def training(
    submitter: Submitter, module_id: int, manifest: Manifest, args: Mapping[str, Any]
) -> Request:
    """A training: its own inputs, executable, timeout, queue, network and limits."""
    train = manifest.train
    if train is None:
        raise WrongState(f"module {module_id} declares no 'train': it cannot be trained")
    rest = dict(args)
    ref, promote = rest.pop("base", None), _flag(rest.pop("promote", None), "promote")
    as_declared = dataclasses.replace(manifest, inputs=train.inputs, defaults=train.defaults)
    bound = bind_arguments(as_declared, rest, max_length=submitter.settings.max_arg_length)
    base = None if ref is None else versions.resolve(submitter.db, module_id, ref, "base")
    timeout = train.timeout or manifest.timeout or submitter.settings.task_timeout
    overrides = {
        "kind": "train", "executable": train.executable, "outputs": None, "catalog": None,
        "network": manifest.network if train.network is None else train.network,
        "limits": (manifest.limits if train.limits is None else train.limits) or None,
        "queue": train.queue or manifest.queue,
    }  # fmt: skip
    commit = submitter.registry.catalog.row(module_id).commit
    extra = {"training": {"promote": promote, "commit": commit}}
    model = None if base is None else (base.version, base.digest)
    return Request(bound, timeout, model, overrides, extra)


def _flag(value: Any, key: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InvalidInput(f"{key}: {str(value)[:100]!r} is not true or false", key=key)
