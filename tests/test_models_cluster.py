"""Trainings and model versions on workers: real API, Redis, PostgreSQL and two
workers, each with its own data folder in its own network namespace."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator

import pytest

from orchestra.models.store import zip_digest
from tests.support.cluster import Cluster, running_cluster
from tests.support.helpers import wait_for
from tests.support.netns import require_namespaces
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer

EXAMPLE = ROOT / "examples" / "trainable"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Cluster]:
    """An API server; worker w0 takes the trainings (queue "train"), w1 the runs."""
    require_namespaces()
    root = tmp_path_factory.mktemp("models-cluster")
    module = root / "trainable"
    shutil.copytree(EXAMPLE, module)
    metadata = json.loads((module / "metadata.json").read_text())
    metadata["train"]["queue"] = "train"
    (module / "metadata.json").write_text(json.dumps(metadata))
    with running_cluster(root, postgres_server) as made:
        made.module = made.register(module)  # type: ignore[attr-defined]
        made.add_worker(queues="train")
        made.add_worker(queues="default", concurrency=2)
        yield made


def _final(cluster: Cluster, task_id: int) -> dict:
    return cluster.wait_status(task_id, {"done", "error", "killed"}, timeout=120)


def test_train_on_one_worker_predict_on_the_other_which_fetches_the_version_once(
    cluster: Cluster,
) -> None:
    module = cluster.module  # type: ignore[attr-defined]
    body = {"epochs": 30, "step_seconds": 0.1}
    task_id = cluster.call("POST", f"/module/{module}/train", body).json()["task"]
    live = wait_for(
        lambda: cluster.call("GET", f"/task/{task_id}/metrics").json(),
        lambda m: m["steps"] or m["status"] in {"done", "error", "killed"}, timeout=60,
        what="live metrics",
    )  # fmt: skip
    assert live["status"] == "running" and live["steps"][0]["step"] == 1  # sent as it trains
    trained = _final(cluster, task_id)
    assert (trained["status"], trained["worker"], trained["trained"]) == ("done", "w0", 1), trained
    record = cluster.call("GET", f"/module/{module}/model/1").json()
    assert record["task"] == task_id and set(record["metrics"]) == {"loss", "accuracy"}
    download = cluster.call("GET", f"/module/{module}/model/1/download")
    assert zip_digest(zipfile.ZipFile(io.BytesIO(download.body))) == record["digest"]

    runs = [cluster.call("POST", f"/module/{module}/run", {}).json()["task"] for _ in range(2)]
    finals = [_final(cluster, run) for run in runs]
    assert [(f["status"], f["worker"]) for f in finals] == [("done", "w1")] * 2, finals
    assert all(f["model"] == {"version": 1, "digest": record["digest"]} for f in finals)
    again = _final(cluster, cluster.call("POST", f"/module/{module}/run", {}).json()["task"])
    assert again["status"] == "done"
    w1 = cluster.workers[1]
    assert w1.text().count("fetching model version 1 ") == 1, w1.text()  # once, then cached
    cached = w1.home / "models" / "cache" / record["digest"].removeprefix("sha256:")
    assert (cached / "model.json").is_file()
    header = cluster.call("GET", f"/task/{runs[0]}/output/events.txt").body.decode()
    assert f"# Historic: model v1 ({record['digest']}) trained by task {task_id};" in header


def test_a_training_on_a_worker_starts_from_its_base_and_failures_make_no_version(
    cluster: Cluster,
) -> None:
    module = cluster.module  # type: ignore[attr-defined]
    body = {"epochs": 3, "base": "@default", "promote": True}
    task_id = cluster.call("POST", f"/module/{module}/train", body).json()["task"]
    trained = _final(cluster, task_id)
    assert trained["status"] == "done" and trained["model"]["version"] == 1, trained
    newest = cluster.call("GET", f"/module/{module}/models").json()["models"][0]
    assert (newest["base"], newest["aliases"]) == (1, ["default"])
    bad = {"epochs": 3, "start": "2019-02-01T00:00:00", "stop": "2019-01-01T00:00:00"}
    failed = _final(cluster, cluster.call("POST", f"/module/{module}/train", bad).json()["task"])
    assert failed["status"] == "error" and failed["trained"] is None
    versions = [
        m["version"] for m in cluster.call("GET", f"/module/{module}/models").json()["models"]
    ]
    assert versions == [newest["version"], 1]
