"""Issue #6.1: PostgreSQL stops mid-load and comes back; the API answers 503 meanwhile and recovers alone.

A real PostgreSQL (the fault tests' own embedded server) is stopped with `pg_ctl -m fast` under a
real `taskapi serve`; nothing is mocked. The one tight bound is the 2 s recovery the issue asks for
(a requirement, kept as such); the others only tell "bounded by DB_TIMEOUT_S" from "hanging until the
client gives up" and are generous, because a busy machine delays answers but never the timeouts.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import psycopg
import pytest

from conftest import RestartablePostgres, Server, make_user, new_database, server_env, wait_until
from loadgen import CreateLoad

DB_TIMEOUT_S = 2.0
RECOVERY_LIMIT_S = 2.0
CLIENT_TIMEOUT_S = 15.0  # CreateLoad's: a request that hangs ends here, with no response
# "Within DB_TIMEOUT_S" on a loaded machine: well short of CLIENT_TIMEOUT_S, far from DB_TIMEOUT_S.
ANSWERED_WITHIN_S = DB_TIMEOUT_S + 5

pytestmark = pytest.mark.slow


@pytest.fixture
def outage_server(running_pg: RestartablePostgres, tmp_path):
    db = new_database(running_pg.cluster, prefix="taskapi_outage")
    srv = Server(env=server_env(db, DB_POOL_SIZE="4", DB_TIMEOUT_S=str(DB_TIMEOUT_S)),
                 log_path=tmp_path / "serve.log").start()
    yield srv, db
    srv.stop()
    if running_pg.is_running():
        running_pg.cluster.drop_database(db.name)


def app_connections(pg: RestartablePostgres, dbname: str) -> int:
    try:
        with psycopg.connect(pg.cluster.admin_dsn, autocommit=True, connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                " AND usename = 'taskapi_app' AND backend_type = 'client backend'",
                                [dbname]).fetchone()[0]
    except psycopg.OperationalError:
        return -1


def test_outage_mid_load_is_503_then_serves_within_2s_and_loses_no_acknowledged_write(running_pg, outage_server):
    srv, db = outage_server
    load = CreateLoad(srv.base_url, clients=6, timeout_s=CLIENT_TIMEOUT_S).start()
    try:
        wait_until(lambda: load.count(201) >= 30, timeout=30, what="201s before the outage")
        running_pg.stop()
        stopped_at = time.monotonic()
        wait_until(lambda: load.count(503, since=stopped_at) >= 6, timeout=30, what="503s during the outage")
        ready = httpx.get(f"{srv.base_url}/ready", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"] == "service_unavailable" and ready.headers["retry-after"]

        running_pg.start()
        up_at = time.monotonic()
        first = wait_until(lambda: load.first(201, ended_after=up_at), timeout=20, what="a 201 after the restart")
        recovery_s = first.ended - up_at
        wait_until(lambda: httpx.get(f"{srv.base_url}/ready", timeout=10).status_code == 200, timeout=10,
                   what="/ready 200 after the restart")
        wait_until(lambda: load.count(201, since=first.ended) >= 30, timeout=30, what="201s after the restart")
    finally:
        outcomes = load.stop()

    print(f"recovery: first 201 {recovery_s:.3f}s after PostgreSQL accepted connections again; "
          f"outcomes {Counter(o.status for o in outcomes)}")
    assert recovery_s <= RECOVERY_LIMIT_S, f"serving again took {recovery_s:.2f}s"
    assert {o.status for o in outcomes} <= {201, 503}, Counter((o.status, o.error) for o in outcomes)
    for o in outcomes:
        assert o.seconds <= ANSWERED_WITHIN_S, f"a request took {o.seconds:.2f}s: {o}"
        if o.status == 503:
            assert o.code == "service_unavailable" and o.retry_after, o
    assert "taskapi.errors" not in srv.log(), "an error was logged (a 500)"

    acknowledged = {o.title for o in outcomes if o.status == 201}
    with psycopg.connect(db.admin_dsn) as conn:  # superuser: sees every user's rows
        stored = Counter(title for (title,) in conn.execute("SELECT title FROM taskapi.tasks"))
    assert acknowledged <= set(stored), f"{len(acknowledged - set(stored))} acknowledged tasks are missing"
    assert not [t for t, n in stored.items() if n > 1], "a task was created twice"


def test_restart_while_idle_never_hands_a_request_a_dead_connection(running_pg, outage_server):
    """Every pooled connection dies with the restart; the first requests after it must not notice."""
    srv, db = outage_server
    user = make_user("restart")
    with httpx.Client(base_url=srv.base_url, timeout=15, headers=user.headers) as client:
        assert client.get("/api/tasks").status_code == 200
        wait_until(lambda: app_connections(running_pg, db.name) == 4, timeout=10, what="a full pool")
        running_pg.stop()
        running_pg.start()
        # A dead connection handed out fails its request (503), and so would waiting DB_TIMEOUT_S for a
        # replacement (PoolTimeout): the statuses say it all, no time bound needed.
        statuses = [client.get("/api/tasks").status_code for _ in range(10)]
        assert statuses == [200] * 10


def test_pool_refills_after_an_outage_and_does_not_stay_shrunk(running_pg, outage_server):
    srv, db = outage_server
    user = make_user("refill")
    wait_until(lambda: app_connections(running_pg, db.name) == 4, timeout=10, what="a full pool")
    running_pg.stop()
    # One request meets the dead connections: the pool discards them and cannot replace them.
    assert httpx.get(f"{srv.base_url}/api/tasks", headers=user.headers, timeout=15).status_code == 503
    running_pg.start()
    up_at = time.monotonic()
    # No traffic from here on: the pool must grow back by itself (psycopg_pool alone grows a pool only
    # for clients waiting). The keeper tries every 0.5 s; 10 s is generous for a busy machine.
    wait_until(lambda: app_connections(running_pg, db.name) == 4, timeout=10, what="the pool back at 4 connections")
    refill_s = time.monotonic() - up_at
    print(f"pool refilled to 4 connections {refill_s:.3f}s after PostgreSQL accepted connections again")
    assert httpx.get(f"{srv.base_url}/api/tasks", headers=user.headers, timeout=15).status_code == 200
