"""Prometheus metrics: off unless METRICS_PORT is set; then every worker counts, the main process serves the sum.

Each worker writes its numbers to memory-mapped files in a folder the server creates at start and
removes at exit (prometheus_client's multiprocess mode); the main process, which serves no API
request, answers ``GET /metrics`` on METRICS_HOST:METRICS_PORT (127.0.0.1 by default) by adding them
up. So a scrape covers every worker, and the API's own port never exposes it.

Labels are bounded by construction: a route is the template Litestar matched (``/api/tasks/{task_id}``),
never the raw path, so no user id or task id can become a label; a method outside the HTTP verbs
becomes ``OTHER``, and a status is the one taskapi sent. prometheus_client is imported only when
metrics are on: with them off, nothing of it is loaded or run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; the seed's budget is 2 s, the pool waits at most DB_TIMEOUT_S.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
# How often a worker copies its pool, admission and posture state into its gauges.
SAMPLE_INTERVAL_S = 1.0


class Metrics:
    """One worker's metrics. Create it only in a process started after `prepare_folder`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: nothing global; the main process reads the files, not a registry.
        self.requests: Counter = Counter("taskapi_http_requests",
                                         "HTTP requests answered, by route template and status",
                                         ["method", "route", "status"], registry=None)
        self.latency: Histogram = Histogram("taskapi_http_request_duration_seconds",
                                            "Time from the request reaching taskapi to the last byte of its answer",
                                            ["method", "route"], buckets=LATENCY_BUCKETS, registry=None)
        self.shed: Counter = Counter("taskapi_requests_shed", "Requests answered 503 by admission, before any work",
                                     registry=None)
        self.jwks_fetches: Counter = Counter("taskapi_jwks_fetches", "JWKS downloads attempted", registry=None)
        self.jwks_failures: Counter = Counter("taskapi_jwks_fetch_failures", "JWKS downloads that failed",
                                              registry=None)

        # The labelled series of each (method, route, status) seen: `labels()` costs more than the
        # increment. Bounded like the labels: routes are templates, methods METHODS or OTHER.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

        def gauge(name: str, text: str, mode: str) -> Gauge:
            return Gauge(name, text, multiprocess_mode=mode, registry=None)  # type: ignore[arg-type]

        self.pool_size = gauge("taskapi_db_pool_connections", "Open database connections, all workers", "livesum")
        self.pool_in_use = gauge("taskapi_db_pool_in_use", "Database connections lent to a request", "livesum")
        self.pool_waiting = gauge("taskapi_db_pool_waiting", "Requests admitted and waiting for a connection",
                                  "livesum")
        self.admission_limit = gauge("taskapi_admission_limit",
                                     "How many requests may wait for a connection now (api/admission.py)", "livesum")
        self.service_rate = gauge("taskapi_admission_service_rate",
                                  "Requests per second the pools serve, as measured (0 before the first)", "livesum")
        self.loop_lag = gauge("taskapi_event_loop_lag_seconds",
                              "How late a worker's event loop runs what is due (the slowest worker)", "livemax")
        self.posture_closed = gauge("taskapi_posture_closed",
                                    "1 while an isolation finding closes /api (api/posture.py), else 0", "livemax")
        self.posture_failing = gauge("taskapi_posture_failing_checks", "Failing isolation checks", "livemax")

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request (called by api/logs.py's RequestLog)."""
        if method not in METHODS:
            method = "OTHER"  # any token is a valid method on the wire: never one series per token
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (self.requests.labels(method, route, str(status)),
                                          self.latency.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)

    def count_shed(self) -> None:
        self.shed.inc()

    def count_jwks_fetch(self, ok: bool) -> None:
        self.jwks_fetches.inc()
        if not ok:
            self.jwks_failures.inc()

    def sample(self, *, pool: dict[str, int], waiting: int, limit: int, rate: float | None, lag_s: float,
               posture_failing: int) -> None:
        """Copy this worker's state into its gauges."""
        size = pool.get("pool_size", 0)
        self.pool_size.set(size)
        self.pool_in_use.set(size - pool.get("pool_available", 0))
        self.pool_waiting.set(max(waiting, pool.get("requests_waiting", 0)))
        self.admission_limit.set(limit)
        self.service_rate.set(rate or 0.0)
        self.loop_lag.set(lag_s)
        self.posture_closed.set(1 if posture_failing else 0)
        self.posture_failing.set(posture_failing)


def prepare_folder() -> str:
    """A fresh, empty folder for the workers' metric files, named in the environment they inherit.

    Called by the main process before it starts the workers (and before prometheus_client is
    imported anywhere: it picks its storage when imported). Files left by an earlier run would add
    their counts to this one's, so the folder is always new.
    """
    folder = tempfile.mkdtemp(prefix="taskapi-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def serve(host: str, port: int) -> Callable[[], None]:
    """Answer GET /metrics on host:port from a thread of this (the main) process; returns what stops it.

    Raises OSError when the port cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def remove_folder(folder: str) -> None:
    """Delete the metric files of this run (at exit)."""
    shutil.rmtree(folder, ignore_errors=True)
