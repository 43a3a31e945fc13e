"""The benchmark's checks: a run that did not measure what it claims is failed, never a number.

wrk and pgbench outputs are parsed from text captured here; the explicit-WHERE baseline is derived
from LIST_TASKS and checked against it on the session's database, as taskapi_app under RLS.
"""

from __future__ import annotations

import re
import sys
import uuid

import psycopg
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # bench/ is a folder of the checkout, not part of the installed package

from api.listing import LIST_TASKS
from bench.measure import Result, Run
from bench.pgbench import BaselineError, check_explicit_where, explicit_where, floor_script
from bench.pgbench import parse as parse_pgbench
from bench.wrk import parse as parse_wrk

WRK_SUMMARY = "Running 2s test @ http://127.0.0.1:8000\n  2 threads and 32 connections\nRequests/sec: 2500.00\n"


def bench_line(*, requests: int = 5000, statuses: str = '{"200": 5000}', errors: str | None = None,
               extra: str = "{}") -> str:
    errors = errors or '{"connect": 0, "read": 0, "write": 0, "timeout": 0}'
    return (f'BENCH {{"duration_us": 2000000, "requests": {requests}, "errors": {errors}, '
            f'"latency_us": {{"p50": 12500, "p99": 51000}}, "statuses": {statuses}, "extra": {extra}}}\n')


def test_a_clean_wrk_run_counts_its_2xx_per_second():
    run = parse_wrk(0, WRK_SUMMARY + bench_line(), "")
    assert run.failure is None
    assert (run.ok, run.ok_per_s, run.p50_ms, run.p99_ms) == (5000, 2500.0, 12.5, 51.0)


@pytest.mark.parametrize("returncode, stdout, stderr, reason", [
    (1, "", "unable to connect to 127.0.0.1:8000 Connection refused", "exited with status 1"),
    (0, "", "", "no BENCH line"),
    (0, WRK_SUMMARY, "", "no BENCH line"),
    (0, "BENCH {not json}\n", "", "not what report.lua prints"),
    (0, 'BENCH {"requests": 5000}\n', "", "not what report.lua prints"),
    (0, bench_line(requests=0, statuses="{}"), "", "no response at all"),
    (0, bench_line(statuses='{"200": 4990, "404": 7, "503": 3}'), "", "non-2xx answers: 7 x 404, 3 x 503"),
    (0, bench_line(statuses='{"200": 4990, "302": 10}'), "", "non-2xx answers: 10 x 302"),
    (0, bench_line(errors='{"connect": 0, "read": 2, "write": 0, "timeout": 5}'), "",
     "socket errors: read 2, timeout 5"),
    (0, bench_line(statuses='{"200": 4000}'), "", "wrk counted 5000 responses, the script 4000 statuses"),
    (0, bench_line(extra='{"reused": 12}'), "", "ran out of fresh tokens"),
    (0, bench_line(extra='{"wrapped": 3, "max_delete": 80000}'), "", "ran out of tasks to delete"),
])
def test_a_wrk_run_that_did_not_measure_is_failed(returncode, stdout, stderr, reason):
    run = parse_wrk(returncode, stdout, stderr)
    assert run.failure is not None and reason in run.failure, run.failure
    assert Result("list", 32, runs=[parse_wrk(0, bench_line(), ""), run]).failure == f"run 2: {run.failure}"


def test_non_2xx_answers_are_not_throughput():
    run = parse_wrk(0, bench_line(statuses='{"200": 4000, "401": 1000}'), "")
    assert run.ok == 4000 and run.ok_per_s == 2000.0 and run.not_ok == {"401": 1000}


PGBENCH_OUT = """transaction type: floor.sql
number of clients: 32
number of transactions actually processed: 9000
number of failed transactions: {failed} (0.000%)
tps = 4500.123 (without initial connection time)
"""


def test_pgbench_runs_are_checked():
    ok = parse_pgbench(0, PGBENCH_OUT.format(failed=0), "", [5000, 6000, 7000], 2)
    assert ok.failure is None and ok.ok_per_s == pytest.approx(4500.123)
    assert "12 failed transactions" in parse_pgbench(0, PGBENCH_OUT.format(failed=12), "", [5000], 2).failure
    assert "exited with status 2" in parse_pgbench(2, "", "connection refused", [], 2).failure
    assert "no tps" in parse_pgbench(0, "pgbench (18.1)\n", "", [], 2).failure
    assert "no per-transaction log" in parse_pgbench(0, PGBENCH_OUT.format(failed=0), "", [], 2).failure


def test_medians_of_runs():
    runs = [Run(ok_per_s=r, p50_ms=r / 100, p99_ms=r / 10) for r in (900.0, 1200.0, 1000.0)]
    result = Result("list", 32, runs=runs)
    assert (result.ok_per_s, result.p50_ms, result.p99_ms) == (1000.0, 10.0, 100.0)
    assert Result("list", 32).failure == "no run"


def test_the_explicit_where_variant_is_derived_from_list_tasks_and_refuses_what_it_cannot_rewrite():
    variant = explicit_where(LIST_TASKS.sql)
    narrowing = re.compile(r" JOIN \(SELECT\) AS own_(\w+) ON \1\.user_id = %\(user_id\)s")
    tables = re.findall(r"\btaskapi\.\w+\b(?!\()", LIST_TASKS.sql)
    assert "t" in narrowing.findall(variant) and len(narrowing.findall(variant)) == len(tables) >= 1
    assert narrowing.sub("", variant) == LIST_TASKS.sql  # nothing else changed
    assert explicit_where("SELECT count(*) FROM taskapi.tasks WHERE done") == (
        "SELECT count(*) FROM taskapi.tasks JOIN (SELECT) AS own_tasks ON tasks.user_id = %(user_id)s WHERE done")
    for statement in ("SELECT 1 FROM other JOIN taskapi.tasks USING (id)", "SELECT 1",
                      "SELECT * FROM taskapi.tasks AS t, taskapi.task_counts AS c"):
        with pytest.raises(BaselineError):
            explicit_where(statement)


@pytest.mark.parametrize("explicit", [False, True])
def test_the_pgbench_scripts_use_only_their_own_variables(explicit):
    """pgbench reads any `:name` as a variable, inside quotes too (to_char's 'HH24:MI:SS')."""
    script = floor_script(explicit=explicit, user_prefix="p", users=3)
    assert set(re.findall(r"(?<!:):([A-Za-z_]\w*)", script)) == {"u", "limit", "offset"}, script


def test_the_explicit_where_variant_returns_what_list_tasks_returns_under_rls(database):
    users = [f"bench-check-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(database.admin_dsn) as conn:  # past RLS: two users' tasks, some completed
        for user in users:
            for i in range(7):
                conn.execute("INSERT INTO taskapi.tasks (user_id, title, completed) VALUES (%s, %s, %s)",
                             [user, f"t{i}", i % 3 == 0])
    assert "LIST_TASKS under RLS" in check_explicit_where(database.app_dsn, database.admin_dsn, users)
    with pytest.raises(BaselineError, match="no task of"):
        check_explicit_where(database.app_dsn, database.admin_dsn, [f"nobody-{uuid.uuid4().hex[:8]}"])
