"""Faults a module or a crowd can cause: huge outputs, floods of output, many writers at once.

The server runs as a real process; its resident memory (VmRSS) is sampled while a module
writes a 1 GiB file, while the file is downloaded, and while a module floods its standard
output, and must stay within a bounded distance of where it started.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from orchestra.config import Settings
from orchestra.service import Service
from tests.support.paths import DATA
from tests.support.server import ServerProcess

FLOOD = DATA / "modules" / "flood"
MARKER = DATA / "modules" / "marker"
RSS_BOUND_KIB = 100 * 1024  # the growth the server may show while it handles a fault
T = TypeVar("T")


@pytest.fixture
def unsandboxed(settings: Settings) -> Iterator[Service]:
    """A service whose tasks run outside the sandbox.

    The marker module reports every run into one shared file outside its task folder, which
    is how a test sees all runs at once; the sandbox (tests/test_sandbox.py) would hide it.
    """
    svc = Service(settings.with_overrides(sandbox="off"))
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def served(tmp_path: Path, uv_cache: Path) -> Iterator[ServerProcess]:
    """A real server on a fresh data folder, with the flood module registered."""
    server = ServerProcess(tmp_path / "home", uv_cache, max_running="2")
    try:
        server.start()
        server.flood = server.register(FLOOD)  # type: ignore[attr-defined]
        yield server
    finally:
        server.close()
        shutil.rmtree(tmp_path / "home" / "tasks", ignore_errors=True)  # a GiB of output


def _peak_rss(server: ServerProcess, action: Callable[[], T]) -> tuple[T, int, int]:
    """Run ``action`` while sampling the server's VmRSS; (result, before, peak) in KiB."""
    before = server.rss_kib()
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, server.rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        stop.set()
        sampler.join()
    return result, before, max(peak, server.rss_kib())


def _download(url: str) -> tuple[int, int]:
    """Read an answer in 1 MiB chunks; (bytes, largest chunk)."""
    total = largest = 0
    with urllib.request.urlopen(url, timeout=120) as answer:
        assert answer.status == 200
        while chunk := answer.read(1024 * 1024):
            total += len(chunk)
            largest = max(largest, len(chunk))
    return total, largest


@pytest.mark.slow
def test_a_one_gib_output_is_written_and_downloaded_with_bounded_server_memory(
    served: ServerProcess,
) -> None:
    megabytes = 1024
    module = served.flood  # type: ignore[attr-defined]

    def produce() -> dict[str, object]:
        task_id = served.run(module, mode="file", megabytes=megabytes)
        return served.wait_final(task_id, timeout=120)

    task, before, peak = _peak_rss(served, produce)
    assert task["status"] == "done", task
    assert task["output"] == [{"name": "big.bin", "size": megabytes * 1024 * 1024}]
    assert peak - before < RSS_BOUND_KIB, (before, peak)

    url = f"{served.url}/task/{task['id']}/output"
    began = time.monotonic()
    (size, largest), before, peak = _peak_rss(served, lambda: _download(url))
    seconds = time.monotonic() - began
    assert size == megabytes * 1024 * 1024
    assert peak - before < RSS_BOUND_KIB, (before, peak)
    print(
        f"\n1 GiB output: server RSS {before // 1024} -> peak {peak // 1024} MiB while "
        f"downloading at {size / seconds / 2**20:.0f} MiB/s"
    )


@pytest.mark.slow
def test_a_module_flooding_standard_output_leaves_server_memory_bounded(
    served: ServerProcess,
) -> None:
    megabytes = 300
    module = served.flood  # type: ignore[attr-defined]

    def flood() -> dict[str, object]:
        task_id = served.run(module, mode="stdout", megabytes=megabytes)
        return served.wait_final(task_id, timeout=120)

    task, before, peak = _peak_rss(served, flood)
    assert task["status"] == "done", task
    log = served.home / "tasks" / str(task["id"]) / "stdout.log"
    assert log.stat().st_size == megabytes * 1024 * 1024
    answer = served.call("GET", f"/task/{task['id']}/log")
    assert answer.status == 200 and len(answer.body) < 3 * 1024 * 1024
    assert answer.json()["stdout"].startswith("[earlier output omitted]")
    assert peak - before < RSS_BOUND_KIB, (before, peak)
    print(f"\n{megabytes} MiB on stdout: server RSS {before // 1024} -> {peak // 1024} MiB")


@pytest.mark.slow
def test_many_threads_submitting_and_reading_at_once_never_see_a_locked_database(
    unsandboxed: Service, tmp_path: Path
) -> None:
    service = unsandboxed
    module = service.register(str(MARKER)).id
    shared = tmp_path / "markers.log"
    failures: list[BaseException] = []
    submitted: list[int] = []
    lock = threading.Lock()

    def submit(worker: int) -> None:
        for number in range(8):
            try:
                task = service.run(module, {"marker": f"{worker}-{number}", "log": str(shared)})
                with lock:
                    submitted.append(task.id)
                service.list_tasks(limit=20)
                service.get_task(task.id)
                service.health()
            except BaseException as exc:
                failures.append(exc)

    workers = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    service.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert failures == [], failures[:3]
    final = [service.get_task(task_id, wait=60).status for task_id in submitted]
    assert final == ["done"] * 64
    lines = shared.read_text().splitlines()
    assert len(lines) == 64 and len({line.split()[1] for line in lines}) == 64
    print("\n8 threads x 8 submissions with reads: 64 done, no database error")
