"""`python -m bench.bigdata`: list requests at a million tasks (issues #11 and #13), p50 at concurrency 4.

One database of 1,000,000 tasks: a user with 300,000 ("big"), a user with 20 ("small"), and 10,000
users sharing the rest. The word `milk` is in 500,000 of the other users' tasks and in 5 of the small
user's; each of the big user's tasks carries one of 100 words (`w00`..`w99`), a priority and mostly a
due date. Every scenario is one fixed request (bench/fixed.lua) with one user's token, run --rounds
times and reported by its medians; a run with any non-2xx answer or socket error is FAILED
(bench/wrk.py). Issue #11's target compares the big user's first page, and a page 40,000 tasks deep
reached with a cursor, with the small user's page of the same size; issue #13's are absolute p50s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg

from api.auth import mint_token
from bench.measure import Result
from bench.stack import BenchDatabase, BenchServer
from bench.wrk import HERE, run_wrk

FIXED_LUA = HERE / "fixed.lua"
BIG, SMALL = "bigdata-big-user", "bigdata-small-user"
OTHERS = 10_000
PAGE = 20  # the small user's whole list, so "the same page" means the same work

# Rows are written as a superuser (past RLS); the triggers of 0004 keep taskapi.task_counts. One
# statement per user group: a statement with parameters is one command.
SEED = ["""
INSERT INTO taskapi.tasks (user_id, title, description, completed, priority, due_at, tags, created_at)
SELECT %(big)s, 'Task ' || g || ' w' || lpad((g %% 100)::text, 2, '0'),
       CASE WHEN g %% 3 = 0 THEN 'A description for task ' || g || ', long enough to be realistic.' END,
       g %% 4 = 0, 1 + g %% 3,
       CASE WHEN g %% 5 <> 0 THEN now() + make_interval(hours => (g %% 2000) - 1000) END,
       CASE WHEN g %% 7 = 0 THEN ARRAY['home'] ELSE '{}' END,
       now() - make_interval(secs => 400000 - g)
FROM generate_series(1, 300000) AS g
""", """
INSERT INTO taskapi.tasks (user_id, title, description, completed, created_at)
SELECT 'bigdata-user-' || (g %% %(others)s),
       'Task ' || g || CASE WHEN g <= 500000 THEN ' buy milk' ELSE ' call home' END,
       CASE WHEN g %% 3 = 0 THEN 'A description for task ' || g || ', long enough to be realistic.' END,
       g %% 4 = 0, now() - make_interval(secs => 800000 - g)
FROM generate_series(1, 699980) AS g
""", """
INSERT INTO taskapi.tasks (user_id, title, created_at)
SELECT %(small)s, 'Small task ' || g || CASE WHEN g <= 5 THEN ' milk' ELSE '' END, now() - make_interval(mins => g)
FROM generate_series(1, 20) AS g
"""]

# The cursor of the page that starts 40,000 tasks deep in the big user's default order.
DEEP = 40_000


@dataclass(frozen=True)
class Scenario:
    name: str
    user: str
    path: str
    target: str


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bigdata", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario, interleaved (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--json", help="where to write the JSON report (default: bench/results/)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="taskapi-bigdata-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with BenchDatabase(keep=args.keep, log=_log) as db:
            _log("seeding 1,000,000 tasks")
            began = time.monotonic()
            with psycopg.connect(db.admin, autocommit=True) as conn:
                for statement in SEED:
                    conn.execute(statement, {"big": BIG, "small": SMALL, "others": OTHERS})
                conn.execute("VACUUM (ANALYZE) taskapi.tasks")
            _log(f"seeded in {time.monotonic() - began:.0f} s")
            secret = secrets.token_urlsafe(32)
            tokens = {user: mint_token(secret, user, ttl_s=6 * 3600) for user in (BIG, SMALL)}
            env = {"DATABASE_URL": db.app, "JWT_SECRET": secret, "WORKERS": "2", "DB_POOL_SIZE": "4",
                   "LOG_LEVEL": "WARNING"}
            with BenchServer(env, work / "server.log") as server:
                scenarios = _scenarios(server.base_url, tokens)
                results = _run(wrk, server, scenarios, tokens, args)
        report = {"started": started, "postgres": db.server_version, "load_after": os.getloadavg(),
                  "results": [r.summary() for r in results]}
        print(_markdown(scenarios, results, db.server_version))
        out = Path(args.json) if args.json else (Path(__file__).parent / "results"
                                                 / f"bigdata-{started.replace(':', '')}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        _log(f"JSON written to {out}")
        return 1 if any(r.failure for r in results) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _scenarios(base_url: str, tokens: dict[str, str]) -> list[Scenario]:
    """The requests; the deep page's cursor is found by walking the big user's list once."""
    deep = _cursor_at(base_url, tokens[BIG], DEEP)
    return [
        Scenario("small user, first page", SMALL, f"/api/tasks?limit={PAGE}", "reference"),
        Scenario("big user, first page", BIG, f"/api/tasks?limit={PAGE}", "<= 1.5x small first page (#11)"),
        Scenario(f"big user, page {DEEP:,} deep (cursor)", BIG, f"/api/tasks?limit={PAGE}&cursor={quote(deep)}",
                 "<= 1.5x small first page (#11)"),
        Scenario("small user, q=milk (in 500,000 others' tasks)", SMALL, "/api/tasks?q=milk", "p50 <= 5 ms (#13)"),
        Scenario("big user, priority=high&sort=due_at", BIG, "/api/tasks?priority=high&sort=due_at",
                 "p50 <= 25 ms (#13)"),
        Scenario("big user, q=w42 (1 % of its tasks)", BIG, "/api/tasks?q=w42", "p50 <= 25 ms (#13)"),
        Scenario("big user, offset=10000", BIG, f"/api/tasks?limit={PAGE}&offset=10000", "(for comparison)"),
    ]


def _cursor_at(base_url: str, token: str, depth: int) -> str:
    """The cursor that starts a page `depth` tasks in: walk there with the largest pages."""
    headers = {"Authorization": f"Bearer {token}"}
    url, seen, cursor = f"{base_url}/api/tasks?limit=200", 0, None
    with httpx.Client(timeout=30) as client:
        while seen < depth:
            body = client.get(url, headers=headers).raise_for_status().json()
            seen += len(body["tasks"])
            cursor = str(body["next_cursor"]) if body["next_cursor"] is not None else None
            if cursor is None:
                raise SystemExit(f"bench: the big user has fewer than {depth} tasks")
            url = f"{base_url}/api/tasks?limit=200&cursor={cursor}"
    assert cursor is not None and seen == depth
    return cursor


def _run(wrk: str, server: BenchServer, scenarios: list[Scenario], tokens: dict[str, str],
         args: argparse.Namespace) -> list[Result]:
    results = [Result(s.name, 4) for s in scenarios]
    for scenario in scenarios:  # warm-up: plans, caches, the token cache
        run_wrk(wrk, url=server.base_url, threads=2, connections=4, seconds=2, script=FIXED_LUA,
                script_args=[scenario.path, tokens[scenario.user]])
    for round_ in range(args.rounds):
        for scenario, result in zip(scenarios, results, strict=True):
            _log(f"round {round_ + 1}/{args.rounds}: {scenario.name}")
            cpu = server.cpu_seconds()
            run = run_wrk(wrk, url=server.base_url, threads=2, connections=4, seconds=args.duration,
                          script=FIXED_LUA, script_args=[scenario.path, tokens[scenario.user]])
            if run.responses:
                run.cpu_us_per_request = (server.cpu_seconds() - cpu) / run.responses * 1e6
            result.runs.append(run)
    for result in results:
        result.peak_rss_mb = server.peak_rss_mb()
    return results


def _markdown(scenarios: list[Scenario], results: list[Result], version: str) -> str:
    reference = results[0].p50_ms
    lines = [f"Big data: 1,000,000 tasks, PostgreSQL {version}, wrk c4, medians of "
             f"{len(results[0].runs)} runs; load average {os.getloadavg()[0]:.1f} at the end", "",
             "| request | 2xx/s | p50 ms | p99 ms | vs small first page | target | server CPU µs/req |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for scenario, result in zip(scenarios, results, strict=True):
        if result.failure:
            lines.append(f"| {scenario.name} | FAILED: {result.failure} | | | | {scenario.target} | |")
            continue
        ratio = f"{result.p50_ms / reference:.2f}x" if reference and result.p50_ms else "-"
        cpu = f"{result.cpu_us_per_request:.0f}" if result.cpu_us_per_request else "-"
        lines.append(f"| {scenario.name} | {result.ok_per_s:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
                     f"| {ratio} | {scenario.target} | {cpu} |")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
