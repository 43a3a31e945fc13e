"""Issue #11.2: admission sized from the measured service rate (Little's law), not a fixed queue length.

The estimator is tested with explicit times (no clock, no sleeps); the gate with a real server, a
pool of two and a table an admin session keeps locked, so the requests in the pool are really stuck.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_metrics import scrape, serving

from api.admission import (
    BUDGET_SHARE,
    CEILING_PER_CONNECTION,
    MAX_RETRY_SPREAD_S,
    MIN_RETRY_SPREAD_S,
    SHED_ROUTE,
    Admission,
    AdmissionGate,
)
from conftest import free_port, lock_waiters, make_user, new_database, table_locked, timed_get, wait_until

T0 = 1000.0


def measured(pool_size: int, service_s: float, *, budget_s: float = 2.0, samples: int = 50) -> Admission:
    """An Admission that has seen `samples` requests hold a connection `service_s` each."""
    admission = Admission(pool_size, budget_s)
    now = T0
    for _ in range(samples):
        taken = admission.holding(now)
        now += service_s
        admission.released(taken, now)
    return admission


# --- the estimator ----------------------------------------------------------------------------------------

def stuck(pool_size: int) -> tuple[Admission, float]:
    """An Admission whose every connection has been held 10 s (a locked table), and the time now."""
    admission = measured(pool_size, 0.005)
    for _ in range(pool_size):
        admission.holding(T0 + 100)
    assert admission.limit(T0 + 110) == admission.floor == pool_size
    return admission, T0 + 110


def test_before_any_measurement_the_bound_is_the_fixed_queue_of_before():
    assert Admission(4, 2.0).rate(T0) is None
    assert Admission(4, 2.0).limit(T0) == 128  # 32 per connection
    assert Admission(1, 2.0).limit(T0) == 64  # at least 64


@pytest.mark.parametrize(("service_s", "expected"), [
    (0.010, 4 / 0.010 * (2 - 0.010) * BUDGET_SHARE),  # 400 requests/s for (a share of) 1.99 s
    (0.050, 4 / 0.050 * (2 - 0.050) * BUDGET_SHARE),  # 80/s
    (0.400, 4 / 0.400 * (2 - 0.400) * BUDGET_SHARE),  # 10/s
])
def test_the_bound_is_the_measured_rate_times_the_budget_left(service_s, expected):
    admission = measured(4, service_s)
    assert admission.rate(T0 + 100) == pytest.approx(4 / service_s)
    assert admission.limit(T0 + 100) == int(expected)


def test_the_bound_follows_the_rate_as_it_changes():
    admission = measured(4, 0.010)
    fast = admission.limit(T0 + 100)
    now = T0 + 200
    for _ in range(60):  # the database slows down to 100 ms per request
        taken = admission.holding(now)
        now += 0.100
        admission.released(taken, now)
    assert admission.limit(now) < fast / 5
    assert admission.limit(now) == pytest.approx(4 / 0.100 * (2 - 0.100) * BUDGET_SHARE, rel=0.05)


def test_connections_stuck_longer_than_the_mean_count_for_what_they_have_shown():
    admission = measured(2, 0.005)
    assert admission.limit(T0 + 100) == int(2 / 0.005 * (2 - 0.005) * BUDGET_SHARE)
    stuck = [admission.holding(T0 + 100), admission.holding(T0 + 100)]  # e.g. waiting on a lock
    assert admission.rate(T0 + 100.25) == pytest.approx(2 / 0.25)  # each has served nothing for 0.25 s
    assert admission.limit(T0 + 100.25) == int(2 / 0.25 * (2 - 0.005) * BUDGET_SHARE)
    assert admission.limit(T0 + 110) == admission.floor  # after 10 s: 0.2/s, under the floor
    for taken in stuck:
        admission.released(taken, T0 + 110)
    assert admission.limit(T0 + 110) == admission.floor  # the 10 s holds weigh on the mean...
    now = T0 + 110
    for _ in range(60):
        taken = admission.holding(now)
        now += 0.005
        admission.released(taken, now)
    assert admission.limit(now) > 100 * admission.floor  # ... until the fast ones outweigh them


def test_time_spent_before_the_app_sees_a_request_comes_off_its_budget():
    admission = measured(4, 0.010)
    on_time = admission.limit(T0 + 100)
    for _ in range(20):
        admission.record_lag(1.0)  # the event loop runs what is due a second late
    assert admission.lag_s == pytest.approx(1.0, abs=0.01)
    assert admission.limit(T0 + 100) == pytest.approx(4 / 0.010 * (2 - 1.0 - 0.010) * BUDGET_SHARE, abs=5)
    assert admission.limit(T0 + 100) < on_time / 1.9
    assert admission.deadline(T0 + 100) == pytest.approx(T0 + 100 + 2 - 1.0, abs=0.01)
    for _ in range(20):
        admission.record_lag(2.5)  # further behind than the whole budget: nobody may wait
    assert admission.limit(T0 + 100) == admission.floor


def test_the_bound_never_exceeds_the_ceiling():
    admission = measured(4, 0.0001)
    assert admission.limit(T0 + 100) == CEILING_PER_CONNECTION * 4


def test_requests_beyond_the_bound_are_shed_and_counted():
    admission, now = stuck(2)  # the floor: two may wait
    for _ in range(2):
        admission.enter(now)  # the two requests holding the stuck connections
    admitted = [admission.enter(now) for _ in range(5)]
    assert admitted == [True, True, False, False, False]
    assert admission.shed_total == 3 and admission.waiting == 2
    admission.leave()  # one of the waiting gives up: a place in the queue frees up
    assert admission.waiting == 1 and admission.enter(now)
    assert admission.waiting == 2 and not admission.enter(now)


def test_a_fixed_db_max_waiting_leaves_the_queue_to_the_pool():
    admission = Admission(2, 2.0, fixed_limit=3)
    assert all(admission.enter(T0) for _ in range(50))  # the pool's max_waiting refuses, not the gate
    assert admission.limit(T0) == 3


def test_retry_after_spreads_the_shed_over_the_time_the_pool_needs_for_them():
    drawn: list[tuple[int, int]] = []

    def rng(low: int, high: int) -> int:
        drawn.append((low, high))
        return high

    admission = Admission(4, 2.0, rng=rng)
    assert admission.retry_after(T0) == MIN_RETRY_SPREAD_S  # nothing measured: 1..2 s
    admission = measured(4, 0.010)  # 400/s
    admission._rng = rng
    for _ in range(admission.limit(T0 + 100)):
        admission.enter(T0 + 100)
    for _ in range(4000):
        assert not admission.enter(T0 + 100)
    assert admission.retry_after(T0 + 100) == 10  # 4,000 shed at 400/s: spread over 10 s
    for _ in range(40_000):
        admission.enter(T0 + 100.5)
    assert admission.retry_after(T0 + 100.5) == MAX_RETRY_SPREAD_S
    assert admission.retry_after(T0 + 103) == MIN_RETRY_SPREAD_S  # the shedding has stopped
    assert all(low == 1 for low, _ in drawn)


def test_the_gate_sheds_before_the_app_sees_the_request_and_lets_the_rest_through():
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    admission, now = stuck(1)  # the floor: one may wait
    admission.enter(now)  # the request holding the connection
    admission.enter(now)  # ... and one waits
    gate = AdmissionGate(app, admission)
    sent: list[dict[str, object]] = []

    async def send(message):
        sent.append(message)

    async def call(method: str, path: str) -> dict[str, object]:
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        sent.clear()
        await gate(scope, None, send)
        return {"status": sent[0]["status"], "headers": dict(sent[0]["headers"]), "body": sent[1]["body"],
                "route": scope.get("path_template")}

    shed = asyncio.run(call("GET", "/api/tasks"))
    assert shed["status"] == 503 and shed["route"] == SHED_ROUTE
    assert int(shed["headers"][b"retry-after"]) >= 1
    assert b'"error":"service_unavailable"' in shed["body"]
    for method, path in (("GET", "/health"), ("GET", "/ready"), ("OPTIONS", "/api/tasks"), ("GET", "/apiary")):
        assert asyncio.run(call(method, path))["status"] == 200
    assert seen == ["/health", "/ready", "/api/tasks", "/apiary"]
    assert admission.shed_total == 1 and admission.admitted == 2


# --- over HTTP --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_beyond_the_bound_503_at_once_within_it_served_when_the_block_lifts(overload_db, tmp_path):
    """Pool of 2, both stuck on a locked table long enough that the measured rate puts the bound at its floor."""
    user = make_user("admission")
    metrics_port = free_port()
    env = {"DB_POOL_SIZE": "2", "DB_TIMEOUT_S": "3", "DB_STATEMENT_TIMEOUT_MS": "30000",
           "METRICS_PORT": str(metrics_port)}
    with serving(overload_db, tmp_path, **env) as srv, ThreadPoolExecutor(max_workers=12) as pool:
        with httpx.Client(base_url=srv.base_url, headers=user.headers) as warm:
            for _ in range(20):  # a measured service time: the bound is the rate's, no longer the default
                assert warm.get("/api/tasks").status_code == 200
        with table_locked(overload_db):
            holders = [pool.submit(timed_get, srv.base_url, "/api/tasks", user.headers) for _ in range(2)]
            wait_until(lambda: lock_waiters(overload_db) == 2, timeout=15, what="both connections blocked")
            # Held for about DB_TIMEOUT_S, the two connections have shown a rate that serves no one in time.
            wait_until(lambda: scrape(metrics_port)["taskapi_admission_limit"][()] == 2, timeout=30,
                       what="the bound at its floor")
            extra = [pool.submit(timed_get, srv.base_url, "/api/tasks", user.headers) for _ in range(7)]
            # Five are refused while the table is still locked; two wait for a connection.
            shed = wait_until(lambda: [f for f in extra if f.done()] if sum(f.done() for f in extra) == 5 else None,
                              timeout=15, what="five requests refused")
            for future in shed:
                status, _, response = future.result()
                assert status == 503, response.text
                assert response.json()["error"] == "service_unavailable"
                assert 1 <= int(response.headers["retry-after"]) <= MAX_RETRY_SPREAD_S
            assert not any(h.done() for h in holders) and sum(not f.done() for f in extra) == 2
        served = [f.result()[0] for f in [*holders, *extra] if f not in shed]
        assert served == [200, 200, 200, 200]
        families = scrape(metrics_port)
    assert families["taskapi_requests_shed_total"][()] == 5
    assert families["taskapi_http_requests_total"][(("method", "GET"), ("route", SHED_ROUTE), ("status", "503"))] == 5


@pytest.mark.slow
def test_a_burst_is_answered_within_the_budget(overload_db, tmp_path):
    """300 requests at once on their own connections, pool of 2: each is served or refused with a Retry-After."""
    users = [make_user("burst") for _ in range(300)]
    env = {"DB_POOL_SIZE": "2", "DB_TIMEOUT_S": "2"}
    with serving(overload_db, tmp_path, **env) as srv:
        with httpx.Client(base_url=srv.base_url, headers=users[0].headers) as warm:
            for _ in range(20):  # a measured service time
                assert warm.get("/api/tasks").status_code == 200

        async def burst() -> list[tuple[int, float, str | None]]:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=30,
                                         limits=httpx.Limits(max_connections=400)) as client:
                async def one(headers: dict[str, str]) -> tuple[int, float, str | None]:
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    response = await client.get("/api/tasks", headers=headers)
                    return response.status_code, loop.time() - started, response.headers.get("retry-after")

                return await asyncio.gather(*(one(u.headers) for u in users))

        results = asyncio.run(burst())
    statuses = {status for status, _, _ in results}
    assert statuses <= {200, 503}, statuses
    assert all(retry_after is not None for status, _, retry_after in results if status == 503)
    print(f"burst of 300: {sum(s == 200 for s, _, _ in results)} served, "
          f"slowest {max(seconds for _, seconds, _ in results):.2f} s")


@pytest.fixture(scope="module")
def overload_db(cluster):
    db = new_database(cluster, prefix="taskapi_admission")
    yield db
    cluster.drop_database(db.name)
