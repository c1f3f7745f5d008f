"""A worker's model cache against a real API server: fetched once by digest under concurrent
first use, checked, read-only, dropped when its version is deleted; trainings sent back."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.distributed.client import ApiClient
from orchestra.distributed.models import ModelCache
from orchestra.tasks.status import Outcome, TaskStatus
from tests.support.paths import ROOT
from tests.support.server import LiveServer

EXAMPLE = ROOT / "examples" / "trainable"


@pytest.fixture
def cache(live_server: LiveServer, tmp_path: Path, uv_cache: Path) -> ModelCache:
    """A worker's cache in a data folder of its own, talking to the live server."""
    worker: Settings = load_settings(
        {"home": tmp_path / "worker", "uv_cache": str(uv_cache)}, environ={}
    )
    return ModelCache(worker, ApiClient(live_server.url, "", "w-test"))


def _trained(live_server: LiveServer, module: int, epochs: int) -> tuple[int, str]:
    service = live_server.service
    task = service.get_task(service.train(module, {"epochs": epochs}).id, wait=60)
    assert task.status == "done" and task.trained is not None, task
    return task.trained, service.get_model(module, task.trained).digest


def test_concurrent_first_uses_fetch_a_version_once_then_share_it(
    live_server: LiveServer, cache: ModelCache, caplog: pytest.LogCaptureFixture
) -> None:
    module = live_server.service.register(str(EXAMPLE)).id
    version, digest = _trained(live_server, module, 2)
    caplog.set_level(logging.INFO, logger="orchestra.distributed.models")
    found: list[Path] = []
    threads = [
        threading.Thread(target=lambda: found.append(cache.folder(module, version, digest)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found) == 4
    fetches = [r for r in caplog.records if r.getMessage().startswith("fetching model version")]
    assert len(fetches) == 1
    folder = found[0]
    stored = live_server.service.models.store.version_dir(module, version)
    assert (folder / "model.json").read_bytes() == (stored / "model.json").read_bytes()
    assert (folder / "model.json").stat().st_mode & 0o222 == 0  # read-only


def test_a_version_that_does_not_match_its_digest_is_refused_and_not_kept(
    live_server: LiveServer, cache: ModelCache
) -> None:
    module = live_server.service.register(str(EXAMPLE)).id
    version, digest = _trained(live_server, module, 2)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(OSError, match="could not fetch model version"):
        cache.folder(module, version, wrong)
    assert not (cache.root / ("0" * 64)).exists()
    assert cache.folder(module, version, digest).is_dir()


def test_a_deleted_version_is_dropped_from_the_cache(
    live_server: LiveServer, cache: ModelCache
) -> None:
    service = live_server.service
    module = service.register(str(EXAMPLE)).id
    first, first_digest = _trained(live_server, module, 2)
    second, second_digest = _trained(live_server, module, 5)
    old, new = (
        cache.folder(module, first, first_digest),
        cache.folder(module, second, second_digest),
    )
    service.move_alias(module, "default", second)
    service.delete_model(module, first)
    assert cache.drop_unused(service.db) == [first_digest.removeprefix("sha256:")]
    assert not old.exists() and new.is_dir()


def test_a_training_sent_by_a_worker_becomes_a_version_on_the_api(
    live_server: LiveServer, cache: ModelCache, tmp_path: Path
) -> None:
    service = live_server.service
    module = service.register(str(EXAMPLE)).id
    _trained(live_server, module, 2)
    # a training row as a worker has it: running, its model folder on the worker's disk
    task = service.train(module, {"epochs": 300, "step_seconds": 0.05})
    runner = service.get_task(task.id).worker  # the API accepts a model from its runner only
    assert runner is not None
    sender = ModelCache(cache.settings, ApiClient(live_server.url, "", runner))
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.json").write_text('{"weight": 1, "bias": 0, "mean": 0}')
    (folder / "sub" / "scaler.bin").write_bytes(b"\x00" * 100_000)
    (folder / "metrics.json").write_text('{"loss": 0.5}')
    outcome = sender.send_training(task.id, folder, Outcome(TaskStatus.DONE, 0))
    assert outcome.status == TaskStatus.DONE, outcome
    newest = service.list_models(module)[0]
    assert (newest.version, newest.task, newest.files, newest.metrics) == (
        2,
        task.id,
        3,
        {"loss": 0.5},
    )
    stored = service.models.store.version_dir(module, 2)
    assert (stored / "sub" / "scaler.bin").read_bytes() == b"\x00" * 100_000
    (folder / "link").symlink_to("/etc/passwd")
    refused = sender.send_training(task.id, folder, Outcome(TaskStatus.DONE, 0))
    assert refused.status == TaskStatus.ERROR and "link: link -> /etc/passwd" in (
        refused.error or ""
    )
    (folder / "link").unlink()
    stranger = cache.send_training(task.id, folder, Outcome(TaskStatus.DONE, 0))  # not its runner
    assert stranger.status == TaskStatus.ERROR and "runs on" in (stranger.error or ""), stranger
    service.kill(task.id)
