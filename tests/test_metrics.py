"""Issue #11.5: GET /metrics in Prometheus text format, off by default, summed over every worker, no ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Database, Server, free_port, make_user, server_env, wait_until

Labels = tuple[tuple[str, str], ...]


@contextmanager
def serving(db: Database, tmp_path, **env: str) -> Iterator[Server]:
    srv = Server(env=server_env(db, **env), log_path=tmp_path / "serve.log").start()
    try:
        yield srv
    finally:
        srv.stop()


def scrape(port: int) -> dict[str, dict[Labels, float]]:
    """The samples of a scrape by name, then by sorted labels; fails unless it is Prometheus text."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def scrape_text(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_metrics_are_off_by_default(http):
    response = http.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_metrics_port_that_cannot_be_bound_stops_the_start(database, tmp_path):
    import socket
    import subprocess
    import sys

    from conftest import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**server_env(database, METRICS_PORT=str(port)), "PORT": str(free_port()), "HOST": "127.0.0.1"}
        import os

        done = subprocess.run([sys.executable, "-m", "api.cli", "serve"], env={**os.environ, **env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_metrics_cover_both_workers_and_never_name_a_user_or_a_path(database, tmp_path):
    alice = make_user("metrics")
    task_id = str(uuid.uuid4())
    stray = f"nothing-{uuid.uuid4().hex}"
    metrics_port = free_port()
    # An unreachable JWKS: each worker tries it once at start, and counts the failure.
    env = {"WORKERS": "2", "METRICS_PORT": str(metrics_port), "JWT_JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks",
           "POSTURE_CHECK_S": "86400"}
    with serving(database, tmp_path, **env) as srv:
        # Concurrent new connections until both workers have answered (a worker's request ids share a
        # prefix): one client at a time would mostly meet the same worker.
        prefixes: set[str] = set()
        lists = 0
        with ThreadPoolExecutor(max_workers=32) as pool:
            while len(prefixes) < 2 and lists < 640:
                for response in pool.map(lambda _: httpx.get(f"{srv.base_url}/api/tasks", headers=alice.headers),
                                         range(32)):
                    assert response.status_code == 200
                    prefixes.add(response.headers["x-request-id"][:16])
                    lists += 1
        assert len(prefixes) == 2, "one worker answered everything"
        with httpx.Client(base_url=srv.base_url, headers=alice.headers) as client:
            assert client.get(f"/api/tasks/{task_id}").status_code == 404
            assert client.get(f"/api/{alice.id}/tasks").status_code == 200
            assert client.get(f"/api/{stray}/{alice.id}").status_code == 404
            assert client.request("BREW", "/api/tasks").status_code == 405

        def settled() -> dict[str, dict[Labels, float]] | None:
            families = scrape(metrics_port)
            pool = families.get("taskapi_db_pool_connections", {}).get(())
            return families if pool == 2 * 4 else None  # both workers' gauges sampled: 2 x DB_POOL_SIZE

        families = wait_until(settled, timeout=15, what="both workers' pool gauges")
        text = scrape_text(metrics_port)

    requests = families["taskapi_http_requests_total"]
    assert requests[(("method", "GET"), ("route", "/api/tasks"), ("status", "200"))] == lists
    assert requests[(("method", "GET"), ("route", "/api/tasks/{task_id}"), ("status", "404"))] == 1
    assert requests[(("method", "GET"), ("route", "/api/{user_id}/tasks"), ("status", "200"))] == 1
    assert requests[(("method", "GET"), ("route", "(unmatched)"), ("status", "404"))] == 1
    assert requests[(("method", "OTHER"), ("route", "(unmatched)"), ("status", "405"))] == 1
    latency = families["taskapi_http_request_duration_seconds_count"]
    assert latency[(("method", "GET"), ("route", "/api/tasks"))] == lists
    assert families["taskapi_jwks_fetches_total"][()] == 2  # one attempt per worker, both summed
    assert families["taskapi_jwks_fetch_failures_total"][()] == 2
    assert families["taskapi_posture_closed"][()] == 0
    assert families["taskapi_posture_failing_checks"][()] == 0
    assert families["taskapi_requests_shed_total"][()] == 0
    assert families["taskapi_db_pool_in_use"][()] == 0
    assert families["taskapi_admission_limit"][()] >= 2 * 4  # at least the floor of each worker
    for secret in (alice.id, task_id, stray, "BREW", alice.token[:20]):
        assert secret not in text
