"""13. Model versions: storing a training's model folder, and listing a module's versions."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from context import Context
from harness import (
    ROOT,
    BenchError,
    Row,
    Stats,
    alternate,
    fmt_delta,
    fmt_stats,
    fmt_value,
    paired_ratios,
    timed,
)
from live import Server, home_database, orchestra_env

_LOGGER = logging.getLogger(__name__)

NAME = "models"
NUMBER = "13"
TARGET_STORE = 1.5  # storing a model folder: at most this many times `cp -r` of it
TARGET_LIST = 0.020  # seconds: median of GET /module/<id>/models with VERSIONS versions
TARGET_MODEL = 0.010  # seconds a task with a model version may add at the median
MODEL_MB = 50
BLOCK = 10  # measurements of one side in a row (see harness.alternate)
VERSIONS = 1000
METHOD = (
    "Store: a model folder of 200 MB in 400 files of random bytes (20 MB, 40 files with "
    "--quick) stored into a fresh model store, as a training's end does (every file hashed "
    "and linked into the store by content, then the version's folder of links), against "
    "`cp -r` of the same folder to the same disk; the two alternate, each rep on fresh "
    "targets. List: the example trainable module trained once through a real server, its "
    "version's row copied until the module has 1,000 versions (straight into the database), "
    "the server started again, then GET /module/<id>/models timed on the client over one "
    "kept-alive connection. Prediction: the no-op module of benchmark 4 and the same code "
    "trained once into a 50 MB version (10 files), both on one real server; a run of each, "
    "request to `done` with a waiting client, interleaved in blocks of 10; the trained one "
    "gets its version's folder read-only in its sandbox, as a worker's task gets its cached "
    "copy. The first fetch of that version into an empty worker cache (download from the "
    "API, unpack, check its digest) is timed apart."
)


def run_bench(ctx: Context) -> list[Row]:
    """Time storing a model folder against cp -r, then the version list of a busy module."""
    return [_store(ctx), _listing(ctx), *_prediction(ctx)]


def _store(ctx: Context) -> Row:
    from orchestra.models.store import ModelStore

    scratch = ctx.folder(f"{NAME}-store")
    files, size = ctx.count(400, 40), 512 * 1024
    model = scratch / "model"
    for index in range(files):
        path = model / f"part-{index // 50}" / f"weights-{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    reps = ctx.reps(7, 2)
    counter = iter(range(1_000_000))

    def store() -> float:
        target = ModelStore(scratch / f"store-{next(counter)}")
        start = time.perf_counter()
        stored = target.ingest(model)
        target.materialize(1, 1, stored.contents)
        seconds = time.perf_counter() - start
        shutil.rmtree(target.root)
        return seconds

    def copy() -> float:
        target = scratch / f"copy-{next(counter)}"
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(model), str(target)], check=True)
        seconds = time.perf_counter() - start
        shutil.rmtree(target)
        return seconds

    ours, classic = alternate(reps, [store, copy], ctx.log)
    ratio = paired_ratios(ours, classic)
    return Row(
        NUMBER,
        f"store a {fmt_value(files * size, 'B')} model folder ({files} files) as a version",
        fmt_stats(Stats(tuple(ours)), "s"),
        f"cp -r: {fmt_stats(Stats(tuple(classic)), 's')}",
        f"{ratio.median:.2f}× cp -r",
        f"≤ {TARGET_STORE:g}× cp -r",
        ratio.median <= TARGET_STORE,
    )


def _listing(ctx: Context) -> Row:
    scratch = ctx.folder(f"{NAME}-list")
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    with Server(env, scratch / "server.log") as server:
        module_id = server.register(ROOT / "examples" / "trainable")
        task = server.client.post(f"/module/{module_id}/train", {"epochs": 2})["task"]
        if server.wait(task)["status"] != "done":
            raise BenchError(f"the training of the example failed: {server.wait(task)}")
    _fill(Path(env["ORCHESTRA_HOME"]), module_id, VERSIONS)
    with Server(env, scratch / "server-2.log") as server:
        times = []
        for _ in range(ctx.count(200, 10)):
            start = time.perf_counter()
            status, body = server.client.request("GET", f"/module/{module_id}/models")
            times.append(time.perf_counter() - start)
            if status != 200 or len(body["models"]) != VERSIONS:
                raise BenchError(f"GET /module/{module_id}/models answered {status}")
    stats = Stats(tuple(times))
    return Row(
        NUMBER,
        f"GET /module/<id>/models, {VERSIONS} versions",
        f"{fmt_stats(stats, 's')}, p95 {fmt_value(stats.p95, 's')}",
        target=f"median < {fmt_value(TARGET_LIST, 's')}",
        met=stats.median < TARGET_LIST,
    )


def _fill(home: Path, module_id: int, total: int) -> None:
    """Copy the module's one version row until it has ``total`` versions."""
    from sqlalchemy import insert, select, update

    from orchestra.storage.tables import ModelCounterRow, ModelVersionRow

    with home_database(home) as db, db.write() as session:
        model = session.scalars(select(ModelVersionRow).limit(1)).one()
        columns = [c.key for c in ModelVersionRow.__table__.columns if c.key != "id"]
        template = {key: getattr(model, key) for key in columns}
        rows = [{**template, "version": n, "task_id": None} for n in range(2, total + 1)]
        session.execute(insert(ModelVersionRow), rows)
        session.execute(
            update(ModelCounterRow).where(ModelCounterRow.module_id == module_id).values(last=total)
        )


def _prediction(ctx: Context) -> list[Row]:
    scratch = ctx.folder(f"{NAME}-predict")
    env = orchestra_env(scratch / "home", ctx.uv_cache)
    with Server(env, scratch / "server.log") as server:
        plain = server.register(ctx.prepare("noop", scratch / "plain"))
        trained = server.register(ctx.prepare("noop_model", scratch / "trained"))
        task = server.client.post(f"/module/{trained}/train", {"megabytes": MODEL_MB})["task"]
        server.wait(task)
        digest = server.client.get(f"/module/{trained}/model/1")["digest"]
        sides = [
            lambda: timed(lambda: server.wait(server.submit(trained))),
            lambda: timed(lambda: server.wait(server.submit(plain))),
        ]
        alternate(3, sides)
        with_model, without = alternate(ctx.reps(60, 4), sides, block=BLOCK)
        fetches = [_first_fetch(ctx, server, trained, digest, n) for n in range(ctx.reps(3, 1))]
    mine, theirs = Stats(tuple(with_model)), Stats(tuple(without))
    extra = mine.median - theirs.median
    return [
        Row(
            NUMBER,
            f"a run with a {MODEL_MB} MB model version, against the module without one",
            f"{fmt_stats(mine, 's')}, p95 {fmt_value(mine.p95, 's')}",
            f"{fmt_stats(theirs, 's')}, p95 {fmt_value(theirs.p95, 's')}",
            f"{fmt_delta(extra)} median",
            f"≤ +{TARGET_MODEL * 1000:g} ms median",
            extra <= TARGET_MODEL,
        ),
        Row(
            NUMBER,
            f"a worker's first fetch of the {MODEL_MB} MB version (download, unpack, check)",
            fmt_stats(Stats(tuple(fetches)), "s"),
        ),
    ]


def _first_fetch(ctx: Context, server: Server, module: int, digest: str, serial: int) -> float:
    """Seconds an empty worker cache takes to hold the version, fetched from the server."""
    from orchestra.config import load_settings
    from orchestra.distributed.client import ApiClient
    from orchestra.distributed.models import ModelCache

    home = ctx.folder(f"{NAME}-worker-{serial}")
    settings = load_settings({"home": home, "uv_cache": str(ctx.uv_cache)}, environ={})
    cache = ModelCache(settings, ApiClient(f"http://127.0.0.1:{server.port}", "", "bench"))
    return timed(lambda: cache.folder(module, 1, digest))
