"""Prometheus figures: tasks by status, queue depth, durations, registrations, requests.

Each app has its own registry (tests build many apps in one process). Task figures are read
from the database at each scrape, so they hold for every server sharing it; durations are
added to a histogram once per finished task, incrementally from the last one seen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from orchestra.service import Service

_LOGGER = logging.getLogger(__name__)
_KEY = "orchestra_metrics"
_REGISTERING = frozenset({"modules.register_module", "web.register_post"})
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


def _by_label(name: str, text: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A gauge with one value per ``label`` value."""
    gauge = GaugeMetricFamily(name, text, labels=[label])
    for value, count in counts.items():
        gauge.add_metric([value], count)
    return gauge


class _TaskCollector(Collector):
    """Reads the task and module figures from the service at each scrape."""

    def __init__(self, service: Service, durations: Histogram) -> None:
        self._service = service
        self._durations = durations
        self._last: datetime | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        self._observe_finished()
        yield from self._durations.collect()
        counts = self._service.tasks.counts()
        yield _by_label("orchestra_tasks", "Tasks in the database by status", "status", counts)
        yield GaugeMetricFamily(
            "orchestra_queue_depth", "Tasks waiting for a slot", value=counts.get("queued", 0)
        )
        by_submitter = GaugeMetricFamily(
            "orchestra_queue_depth_by_submitter",
            "Tasks waiting for a slot, by submitter (token name and end user)",
            labels=["submitted_by", "user"],
        )
        for name, user, count in self._service.tasks.queued_by_submitter():
            by_submitter.add_metric([name, user or ""], count)
        yield by_submitter
        yield _by_label("orchestra_modules", "Modules by status", "status", self._module_counts())
        yield from self._worker_metrics()
        yield from self._model_metrics()
        yield _by_label(
            "orchestra_task_starts",
            "Tasks by how they started: warm, cold, or reused (answered from an earlier task)",
            "start",
            self._service.tasks.starts(),
        )
        yield _by_label(
            "orchestra_warm_spares",
            "Spare interpreters of this server, started ahead for warm starts, by state",
            "state",
            self._service.tasks.spares(),
        )

    def _model_metrics(self) -> Iterator[Metric]:
        trainings = GaugeMetricFamily(
            "orchestra_trainings", "Training tasks by outcome (or state)", labels=["outcome"]
        )
        versions = GaugeMetricFamily(
            "orchestra_model_versions", "Model versions kept, by module", labels=["module"]
        )
        by_status, by_module = self._service.models.figures()
        for status in ("queued", "running", "done", "error", "killed"):
            trainings.add_metric([status], by_status.get(status, 0))
        for module, count in sorted(by_module.items()):
            versions.add_metric([str(module)], count)
        yield from (trainings, versions)

    def _worker_metrics(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "orchestra_worker_running", "Tasks running, by worker or server", labels=["worker"]
        )
        slots = GaugeMetricFamily(
            "orchestra_worker_concurrency", "Tasks a worker runs at once", labels=["worker"]
        )
        age = GaugeMetricFamily(
            "orchestra_worker_heartbeat_age_seconds",
            "Seconds since a worker's last heartbeat",
            labels=["worker"],
        )
        for load in self._service.workers():
            running.add_metric([load.name], load.running)
            if load.concurrency is not None:
                slots.add_metric([load.name], load.concurrency)
            if load.heartbeat_age is not None:
                age.add_metric([load.name], load.heartbeat_age)
        yield from (running, slots, age)

    def _module_counts(self) -> dict[str, int]:
        counts = {"installing": 0, "installed": 0, "error": 0}
        for module in self._service.list_modules(everything=True):  # staged ones count too
            counts[module.status] = counts.get(module.status, 0) + 1
        return counts

    def _observe_finished(self) -> None:
        with self._lock:
            for finished, seconds in self._service.finished_tasks(self._last):
                self._durations.observe(seconds)
                self._last = finished


class _Metrics:
    """One app's registry and instruments."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "orchestra_request_seconds",
            "Time to answer a request, by route and status",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "orchestra_registrations",
            "Module registrations accepted by this server",
            registry=self.registry,
        )
        durations = Histogram(
            "orchestra_task_duration_seconds",
            "How long finished tasks ran",
            buckets=_DURATION_BUCKETS,
            registry=None,  # collected by the task collector, after it has read the new ends
        )
        self.registry.register(_TaskCollector(service, durations))


def _start() -> None:
    g.orchestra_started = time.perf_counter()


def _finish(response: Response) -> Response:
    started = g.pop("orchestra_started", None)
    if started is None:
        return response
    seconds = time.perf_counter() - started
    metrics: _Metrics = current_app.extensions[_KEY]
    endpoint = request.endpoint or "unknown"
    metrics.latency.labels(request.method, endpoint, str(response.status_code)).observe(seconds)
    if endpoint in _REGISTERING and response.status_code in (202, 303):
        metrics.registrations.inc()
    # the server's own time, for clients and benchmarks that want it apart from the network
    response.headers["Server-Timing"] = f"app;dur={seconds * 1000:.2f}"
    return response


def exposition() -> tuple[bytes, str]:
    """The current app's figures in Prometheus' text format, with its content type."""
    metrics: _Metrics = current_app.extensions[_KEY]
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    """Time every request of ``app`` and keep its figures."""
    app.extensions[_KEY] = _Metrics(current_service_of(app))
    app.before_request(_start)
    app.after_request(_finish)


def current_service_of(app: Flask) -> Service:
    """The service ``app`` serves."""
    return app.extensions["orchestra"]  # type: ignore[no-any-return]
