"""Training tasks and model versions through the service: the example module, real sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.errors import InvalidInput, NotFound, WrongState
from orchestra.models.store import ModelStore
from orchestra.records import TaskInfo
from orchestra.service import Service
from tests.support.helpers import wait_for
from tests.support.paths import ROOT
from tests.test_disk_full import small_disk  # noqa: F401 - the fixture

EXAMPLE = ROOT / "examples" / "trainable"
pytestmark = pytest.mark.usefixtures("database")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def server(service: Service) -> Iterator[Service]:
    """The service with its task runner started."""
    service.start()
    yield service


@pytest.fixture
def example(server: Service) -> int:
    """The trainable example, registered."""
    return server.register(str(EXAMPLE)).id


def _final(service: Service, task: TaskInfo) -> TaskInfo:
    info = service.get_task(task.id, wait=60)
    assert info.status in {"done", "error", "killed"}, info
    return info


def _train(service: Service, module_id: int, **args: Any) -> TaskInfo:
    return _final(service, service.train(module_id, args))


def _trainable(
    folder: Path, train_body: str, run_body: str = "", limits: dict[str, int] | None = None
) -> Path:
    """A module whose training runs ``train_body`` with ``out`` its model folder."""
    package = folder / "tm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    head = "import os, pathlib, sys\nout = pathlib.Path(sys.argv[1])\n"
    (package / "train.py").write_text(head + textwrap.dedent(train_body))
    (package / "run.py").write_text(head + textwrap.dedent(run_body or "pass\n"))
    metadata = {
        "name": folder.name, "description": "", "args": [], "output": {"type": "files"},
        "install": {"executable": "tm.run", "files": ["tm"]},
        "train": {"executable": "tm.train",
                  "limits": {"output_mb": 5} if limits is None else limits},
    }  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def _sha256sum(folder: Path) -> str:
    """The digest as documented: sha256 of ``sha256sum``'s lines for the folder, by path."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        lines.append((rel, f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n"))
    return (
        "sha256:" + hashlib.sha256("".join(line for _, line in sorted(lines)).encode()).hexdigest()
    )


def test_two_trainings_make_two_versions_with_metrics_lineage_and_the_default_alias(
    server: Service, example: int
) -> None:
    first = _train(server, example, epochs=5, learning_rate=0.1)
    second = _train(server, example, epochs=30, learning_rate=1.0, base="1")
    assert (first.status, first.kind, first.trained) == ("done", "train", 1), first
    assert (second.status, second.trained, second.model["version"]) == ("done", 2, 1)  # type: ignore[index]
    newest, oldest = server.list_models(example)
    assert (newest.version, oldest.version) == (2, 1)
    assert oldest.args["epochs"] == "5" and newest.args["learning_rate"] == "1.0"
    assert (oldest.task, newest.task, newest.base, oldest.base) == (first.id, second.id, 1, None)
    assert set(oldest.metrics or {}) == {"loss", "accuracy"}
    assert newest.metrics != oldest.metrics
    assert oldest.aliases == ("default",) and newest.aliases == ()
    assert newest.generation and newest.created >= oldest.created
    for record in (oldest, newest):
        _, files = server.model_files(example, record.version)
        folder = server.models.store.version_dir(example, record.version)
        assert _sha256sum(folder) == record.digest
        assert sorted(name for name, _ in files) == ["metrics.json", "metrics.jsonl", "model.json"]
        assert record.files == 3 and record.size == sum(p.stat().st_size for _, p in files)
    history = server.aliases(example).history
    assert [(m.alias, m.from_, m.to, m.by) for m in history] == [
        ("default", None, 1, f"task {first.id}")
    ]
    metrics = server.task_metrics(second.id)
    assert len(metrics["steps"]) == 30 and metrics["steps"][-1]["step"] == 30
    assert metrics["final"] == newest.metrics


def test_runs_use_the_version_they_name_or_the_default_and_say_so(
    server: Service, example: int
) -> None:
    _train(server, example, epochs=5)
    _train(server, example, epochs=20, promote="true")
    aliases = server.aliases(example)
    assert aliases.aliases == {"default": 2}
    assert [(m.from_, m.to) for m in aliases.history] == [(None, 1), (1, 2)]
    by_default = _final(server, server.run(example, {}))
    by_number = _final(server, server.run(example, {"model": 1}))
    server.move_alias(example, "champion", 1)
    by_alias = _final(server, server.run(example, {"model": "@champion"}))
    digests = {v.version: v.digest for v in server.list_models(example)}
    assert by_default.model == {"version": 2, "digest": digests[2]}, by_default
    assert by_number.model == {"version": 1, "digest": digests[1]}
    assert by_alias.model == {"version": 1, "digest": digests[1]}
    header = server.task_output_file(by_number.id, "events.txt").read_text()
    assert f"# Historic: model v1 ({digests[1]}) trained by task 1;" in header


def test_a_run_before_any_training_is_refused_and_bad_model_names_are_400(
    server: Service, example: int
) -> None:
    with pytest.raises(WrongState, match="train it first"):
        server.run(example, {})
    _train(server, example, epochs=2)
    for bad in ("7", "@nobody", "@Bad!", "one"):
        with pytest.raises(InvalidInput, match="model"):
            server.run(example, {"model": bad})
    with pytest.raises(InvalidInput, match="base"):
        server.train(example, {"base": "9"})
    with pytest.raises(InvalidInput, match="epochs"):
        server.train(example, {"epochs": "many"})
    assert [t.id for t in server.list_tasks().tasks] == [1]


def test_moving_the_alias_changes_the_next_run_but_not_a_queued_one(
    server: Service, example: int
) -> None:
    _train(server, example, epochs=2)
    _train(server, example, epochs=3)
    blockers = [server.train(example, {"epochs": 200, "step_seconds": 0.05}) for _ in range(2)]
    queued = server.run(example, {})
    assert queued.status == "queued" and queued.model["version"] == 1  # type: ignore[index]
    server.move_alias(example, "default", 2)
    after = server.run(example, {})
    with pytest.raises(WrongState, match="used by queued or running"):
        server.delete_model(example, 1)
    for task in blockers:
        server.kill(task.id)
    assert _final(server, queued).model["version"] == 1  # type: ignore[index]
    assert _final(server, after).model["version"] == 2  # type: ignore[index]


def test_deleting_versions_frees_files_and_numbers_are_never_given_twice(
    server: Service, example: int
) -> None:
    for _ in range(2):
        _train(server, example, epochs=2)  # the same inputs: the same files
    store: ModelStore = server.models.store
    blobs = sorted(p for p in store.blobs.rglob("*") if p.is_file())
    assert len(blobs) == 3  # stored once for both versions
    with pytest.raises(WrongState, match="aliased"):
        server.delete_model(example, 1)
    server.delete_model(example, 2)
    assert all(p.exists() for p in blobs)  # still used by version 1
    server.remove_alias(example, "default")
    server.delete_model(example, 1)
    assert not any(p.is_file() for p in store.blobs.rglob("*"))
    assert _train(server, example, epochs=2).trained == 3
    with pytest.raises(NotFound):
        server.get_model(example, 1)
    assert server.aliases(example).history[-1].to == 3


def test_a_deleted_training_leaves_its_version_without_a_task_and_its_id_trains_anew(
    server: Service, example: int
) -> None:
    first = _train(server, example, epochs=2)
    server.delete_task(first.id)  # the newest task: SQLite gives its id to the next one
    assert server.get_model(example, 1).task is None
    second = _train(server, example, epochs=3)
    assert (second.status, second.trained) == ("done", 2), second
    assert [(v.version, v.task) for v in server.list_models(example)] == [(2, second.id), (1, None)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("sys.exit(1)\n", "exited with status 1"),
        ("pass\n", "the training wrote no model"),
        ("os.symlink('/etc/passwd', out / 'weights')\n", "link: weights -> /etc/passwd"),
        ("(out / 'w').write_bytes(b'x' * (8 << 20))\n", "output"),
    ],
    ids=["exit-1", "nothing", "link", "output-limit"],
)
def test_a_failed_training_makes_no_version_and_says_why(
    server: Service, tmp_path: Path, body: str, expected: str
) -> None:
    module = server.register(str(_trainable(tmp_path / "bad", body))).id
    task = _train(server, module)
    assert task.status == "error" and expected in (task.error or ""), task.error
    assert server.list_models(module) == []
    assert not any(p.is_file() for p in server.models.store.root.rglob("*"))


def test_a_run_cannot_write_into_its_model_folder(server: Service, tmp_path: Path) -> None:
    run = "(pathlib.Path(os.environ['ORCHESTRA_MODEL_DIR']) / 'w').write_text('changed')\n"
    folder = _trainable(tmp_path / "writer", "(out / 'w').write_text('trained')\n", run)
    module = server.register(str(folder)).id
    _train(server, module)
    task = _final(server, server.run(module, {}))
    assert task.status == "error" and "Read-only file system" in (task.error or ""), task.error
    _, files = server.model_files(module, 1)
    assert files[0][1].read_text() == "trained"


def test_keep_drops_the_oldest_unaliased_versions(service: Service, settings: Any) -> None:
    import dataclasses

    from orchestra.service import Service as Fresh

    kept = Fresh(dataclasses.replace(settings, model_keep=1))
    try:
        kept.start()
        module = kept.register(str(EXAMPLE)).id
        for _ in range(3):
            _train(kept, module, epochs=2)
        assert [v.version for v in kept.list_models(module)] == [3, 1]  # newest + default
    finally:
        kept.close()


def test_a_module_declaring_a_request_option_is_refused_naming_it(
    server: Service, tmp_path: Path
) -> None:
    folder = _trainable(tmp_path / "reserved", "pass\n")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["args"] = ["model"]
    metadata["train"]["hyperparameters"] = ["promote"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(InvalidInput) as caught:
        server.register(str(folder))
    assert "args: 'model'" in str(caught.value) and "train.hyperparameters: 'promote'" in str(
        caught.value
    )
    assert all(m.status != "installed" for m in server.list_modules(everything=True))


def test_removing_the_module_removes_its_version_files_and_keeps_the_records(
    server: Service, example: int
) -> None:
    _train(server, example, epochs=2)
    server.remove(example)
    store = server.models.store
    assert not any(p.is_file() for p in store.root.rglob("*"))
    assert [v.removed for v in server.list_models(example)] == [True]


def test_purging_the_module_forgets_its_versions_aliases_and_history(
    server: Service, example: int
) -> None:
    from sqlalchemy import func, select

    from orchestra.storage.tables import AliasMoveRow, ModelVersionRow

    _train(server, example, epochs=2)
    server.remove(example, purge=True)
    with pytest.raises(NotFound):
        server.list_models(example)
    with server.db.read() as session:
        for table in (ModelVersionRow, AliasMoveRow):
            assert session.scalar(select(func.count()).select_from(table)) == 0
    assert not any(p.is_file() for p in server.models.store.root.rglob("*"))
    again = server.register(str(EXAMPLE)).id  # SQLite may give the purged id again
    assert _train(server, again, epochs=2).trained == 1  # a new module starts from 1


@pytest.mark.slow
def test_a_training_survives_a_server_restart_and_versions_survive_the_next(
    tmp_path: Path, uv_cache: Path
) -> None:
    import signal

    from tests.support.server import ServerProcess

    server = ServerProcess(tmp_path / "home", uv_cache, max_running="2")
    try:
        server.start()
        module = server.register(EXAMPLE)
        first = server.call("POST", f"/module/{module}/train", {"epochs": 2}).json()["task"]
        assert server.wait_final(first)["status"] == "done"
        body = {"epochs": 60, "step_seconds": 0.05, "promote": True}
        second = server.call("POST", f"/module/{module}/train", body).json()["task"]
        steps = tmp_path / "home" / "tasks" / str(second) / "output" / "metrics.jsonl"
        wait_for(lambda: steps.is_file() and steps.read_text().count("\n"), bool,
                 timeout=30, what="the training's first steps")  # fmt: skip
        server.stop(signal.SIGKILL)
        server.start()  # adopts the training, which goes on to make its version
        task = server.wait_final(second)
        assert (task["status"], task["trained"]) == ("done", 2), task
        assert steps.read_text().count("\n") == 60  # it ran once, to the end
        before = server.call("GET", f"/module/{module}/aliases").json()
        assert before["aliases"] == {"default": 2}
        server.stop(signal.SIGTERM)
        server.start()
        models = server.call("GET", f"/module/{module}/models").json()["models"]
        assert [m["version"] for m in models] == [2, 1]
        assert server.call("GET", f"/module/{module}/aliases").json() == before
        run = server.call("POST", f"/module/{module}/run", {}).json()["task"]
        assert server.wait_final(run)["model"]["version"] == 2
    finally:
        server.close()


@pytest.mark.slow
def test_a_training_that_fills_the_disk_makes_no_version_and_the_next_one_does(
    small_disk: Path,  # noqa: F811 - the fixture imported above
    uv_cache: Path,
    tmp_path: Path,
) -> None:
    from tests.support.server import ServerProcess

    body = """
    chunk = b'x' * (1 << 20)
    with open(out / 'weights.bin', 'wb') as handle:
        while '--fill' in sys.argv:
            handle.write(chunk)
    (out / 'model.json').write_text('{}')
    """
    folder = _trainable(tmp_path / "filler", body, limits={})
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["train"]["args"] = ["fill"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    server = ServerProcess(small_disk / "home", uv_cache, min_free_mb="8")
    try:
        server.start()
        module = server.register(folder)
        first = server.call("POST", f"/module/{module}/train", {"fill": "yes"}).json()["task"]
        task = server.wait_final(first)
        assert task["status"] == "error" and "no space left" in task["error"], task
        assert server.call("GET", f"/module/{module}/models").json()["models"] == []
        blobs = small_disk / "home" / "models" / "blobs"
        assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
        assert server.call("DELETE", f"/task/{first}").status == 204  # the space comes back
        second = server.call("POST", f"/module/{module}/train", {}).json()["task"]
        again = server.wait_final(second)
        assert again["trained"] == 1, again
    finally:
        server.close()


def test_concurrent_settlers_make_one_version_per_task_and_distinct_numbers(
    service: Service, tmp_path: Path
) -> None:
    import threading

    from orchestra.models import versions

    module = service.register(str(EXAMPLE)).id
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    store = service.models.store
    stored = store.ingest(folder)
    made: list[tuple[int, bool]] = []

    def settle(task_id: int) -> None:
        record = versions.Made(module, task_id, None, None, {}, None, None, False)
        version, created = versions.create(service.db, store, record, stored)
        made.append((version.version, created))

    first, second, third = (service.train(module, {"epochs": "1"}).id for _ in range(3))
    settlers = (first, first, second, third, third)
    threads = [threading.Thread(target=settle, args=(task,)) for task in settlers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v for v, created in made if created) == [1, 2, 3], made
    assert sum(created for _, created in made) == 3 and len(made) == 5
    assert sorted(v.task for v in service.list_models(module)) == [first, second, third]


def test_a_stored_folder_becomes_links_to_read_only_blobs_and_leaves_no_staging(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "model"
    (folder / "scaler").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 4096)
    (folder / "scaler" / "copy.bin").write_bytes(b"w" * 4096)  # the same content twice
    (folder / "scaler" / "mean.json").write_text("[0.5]")
    store = ModelStore(tmp_path / "store")
    stored = store.ingest(folder)
    assert stored.digest == _sha256sum(folder) and stored.size == 2 * 4096 + 5
    final = store.materialize(4, 1, stored)
    blobs = [p for p in store.blobs.rglob("*") if p.is_file()]
    assert len(blobs) == 2 and all(p.stat().st_mode & 0o777 == 0o444 for p in blobs)
    for rel, sha, _ in stored.contents:
        assert (final / rel).stat().st_ino == store.blob(sha).stat().st_ino, rel
    left = store.versions / ".staged-left-by-a-stopped-server"
    left.mkdir()
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    again = store.ingest(folder)  # stored already: nothing new, and its staging unused
    assert not left.exists() and again.staged is not None and again.staged.is_dir()
    store.unstage(again)
    store.unstage(stored)  # taken by the version: nothing to remove
    assert sorted(p.name for p in store.versions.iterdir()) == ["4"]
    assert [p for p in store.blobs.rglob("*") if p.is_file()] == blobs
    assert (final / "scaler" / "mean.json").read_text() == "[0.5]"
