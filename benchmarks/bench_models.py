"""13. Model versions: storing a model folder, listing versions, predicting on a worker."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
from live import Server, home_database, one_worker, orchestra_env

if TYPE_CHECKING:
    from orchestra.models.store import ModelStore

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
    "--quick), written back to disk (`sync`) before the first rep, stored as a training's "
    "end does (every file hashed and linked into the store by content, the version's folder "
    "of links put in place) into a data folder's model store that has stored a version "
    "before (its folders made), against `cp -r` of the same folder to the same disk; the two "
    "alternate, each rep on fresh targets (the stored files are freed after each rep, so "
    "every rep stores them anew). List: the example trainable module trained once through a "
    "real server, its version's row copied until the module has 1,000 versions (straight "
    "into the database), the server started again, then GET /module/<id>/models timed on "
    "the client over one kept-alive connection. Prediction: a real PostgreSQL and Redis (the "
    "test suite's fixtures), `orchestra serve` with the Celery executor and one `orchestra "
    "worker` (concurrency 1, its own data folder), as in benchmark 9; the no-op module of "
    "benchmark 4 and the same code trained on the worker into a 50 MB version (10 files of "
    "random bytes, sent to the API's store); a run of each, request to `done` with a "
    "waiting client, interleaved in blocks of 10, the trained one with its version in the "
    "worker's cache (read-only in its sandbox). First run: a new version trained, then the "
    "first run with it, which the worker starts only once it has fetched the version "
    "(download from the API, unpack, check its digest), three times."
)


def run_bench(ctx: Context) -> list[Row]:
    """Storing a model folder against cp -r, a busy module's version list, worker runs."""
    return [_store(ctx), _listing(ctx), *_prediction(ctx)]


def _store(ctx: Context) -> Row:
    scratch = ctx.folder(f"{NAME}-store")
    files, size = ctx.count(400, 40), 512 * 1024
    model = scratch / "model"
    for index in range(files):
        path = model / f"part-{index // 50}" / f"weights-{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    # written back before the first rep: otherwise the kernel writes the folder out while
    # the reps run, and whichever side meets that pays it (cp -r took 98 ms or 170 ms)
    os.sync()
    reps = ctx.reps(15, 2)
    counter = iter(range(1_000_000))
    target = _used_store(scratch)

    def store() -> float:
        start = time.perf_counter()
        stored = target.ingest(model)
        target.materialize(1, 1, stored)
        seconds = time.perf_counter() - start
        target.drop_version(1, 1)  # the next rep stores the same files anew
        target.free([sha for _, sha, _ in stored.contents], set())
        return seconds

    def copy() -> float:
        copied = scratch / f"copy-{next(counter)}"
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(model), str(copied)], check=True)
        seconds = time.perf_counter() - start
        shutil.rmtree(copied)
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


def _used_store(scratch: Path) -> ModelStore:
    """A data folder's model store that has stored a version before (its folders made)."""
    from orchestra.models.store import ModelStore

    seed = scratch / "seed"
    seed.mkdir()
    (seed / "weights.bin").write_bytes(b"a version stored earlier")
    store = ModelStore(scratch / "store")
    store.materialize(1, 0, store.ingest(seed))
    return store


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
    """Runs with and without a model through one Celery worker, and first runs that fetch."""
    with one_worker(ctx, f"{NAME}-predict") as server:
        return _on_worker(ctx, server)


def _on_worker(ctx: Context, server: Server) -> list[Row]:
    scratch = ctx.folder(f"{NAME}-modules")
    plain = server.register(ctx.prepare("noop", scratch / "plain"))
    trained = server.register(ctx.prepare("noop_model", scratch / "trained"))
    alternate(3, [lambda: timed(lambda: _done(server, plain))])  # the worker builds its env
    firsts = [_first_prediction(server, trained, n) for n in range(1, ctx.reps(3, 1) + 1)]
    sides = [
        lambda: timed(lambda: _done(server, trained, {"model": "1"})),
        lambda: timed(lambda: _done(server, plain)),
    ]
    alternate(3, sides)
    with_model, without = alternate(ctx.reps(60, 4), sides, block=BLOCK)
    mine, theirs = Stats(tuple(with_model)), Stats(tuple(without))
    extra = mine.median - theirs.median
    first = Stats(tuple(firsts))
    return [
        Row(
            NUMBER,
            f"a run with a {MODEL_MB} MB model version in the worker's cache, against the "
            "module without one (Celery, 1 worker)",
            f"{fmt_stats(mine, 's')}, p95 {fmt_value(mine.p95, 's')}",
            f"{fmt_stats(theirs, 's')}, p95 {fmt_value(theirs.p95, 's')}",
            f"{fmt_delta(extra)} median",
            f"≤ +{TARGET_MODEL * 1000:g} ms median",
            extra <= TARGET_MODEL,
        ),
        Row(
            NUMBER,
            f"the worker's first run with a {MODEL_MB} MB version (it fetches the version)",
            fmt_stats(first, "s"),
            ratio=f"{fmt_delta(first.median - mine.median)} over a cached run",
        ),
    ]


def _done(server: Server, module_id: int, args: dict[str, str] | None = None) -> None:
    """A run, request to `done`; BenchError if it ends otherwise."""
    task = server.wait(server.submit(module_id, args))
    if task["status"] != "done":
        raise BenchError(f"a run of module {module_id} ended {task['status']}: {task}")


def _first_prediction(server: Server, module_id: int, version: int) -> float:
    """Train version ``version`` on the worker, then time the first run with it."""
    task = server.client.post(f"/module/{module_id}/train", {"megabytes": MODEL_MB})["task"]
    made = server.wait(task, timeout=600)
    if made["status"] != "done":
        raise BenchError(f"the training of the {MODEL_MB} MB model failed: {made}")
    return timed(lambda: _done(server, module_id, {"model": str(version)}))
