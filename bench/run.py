"""`python -m bench`: seed a realistic data set, run `taskapi serve`, load it with wrk, compare with pgbench.

Every scenario runs --rounds times (default 3), the rounds interleaved so that the machine's drift
spreads over all of them, and is reported by its medians. Only 2xx answers count as throughput; a
run with any other answer, a socket error or timeout, or no readable output is failed, and its
scenario is FAILED in the table and meets no target (see bench/measure.py and bench/wrk.py).

Scenarios (wrk, bench/scenarios.lua): list, list with `completed`, get, create, update, toggle,
delete and a 60/20/10/5/5 mix at --concurrency; list, get, create, update at concurrency 4; and
the list with a token the server has never seen on every request (verified in full, not cached):
`list_cold` (HS256) and `list_jwks` (EdDSA, key from a JWKS the bench serves on 127.0.0.1). Then
many idle keep-alive connections (bench/idle.lua), one run: a survival check, not a rate.

Baselines in the same run (bench/pgbench.py): pgbench sending the API's own statements for a list
request as taskapi_app (the database floor), and LIST_TASKS with the owner filter written out, as a
role past RLS (the cost of row-level security).
Markdown goes to stdout, JSON to --json (default bench/results/<time>.json). The exit status is 1
when a scenario FAILED, 0 otherwise (a target missed is reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import (
    USER_PREFIX,
    JwksServer,
    Minter,
    hs256_minter,
    seed,
    user_id,
    write_cold_tokens,
    write_wrk_data,
)
from bench.measure import Result, Run
from bench.pgbench import check_explicit_where, floor_script, run_pgbench
from bench.stack import ROOT, BenchDatabase, BenchServer
from bench.wrk import IDLE_LUA, SCENARIOS_LUA, run_wrk

SCENARIOS = ["list", "list_completed", "get", "create", "update", "toggle", "delete", "mix"]
LIGHT_SCENARIOS = ["list", "get", "create", "update"]
COLD_SCENARIOS = ["list_cold", "list_jwks"]
FLOOR = "pgbench floor (RLS, API's SQL)"
EXPLICIT_WHERE = "pgbench explicit WHERE, RLS bypassed"
# Fresh tokens written for each cold run: twice what the warm list managed in the same round (a
# cold request is slower), and at least this rate. A run that still runs out is failed, not reused.
COLD_TOKENS_MIN_RATE = 1_000


@dataclass
class Target:
    target: str
    measured: str
    met: bool


@dataclass
class Report:
    started: str
    machine: dict[str, Any]
    options: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started, "machine": self.machine, "options": self.options,
                "results": [r.summary() for r in self.results], "ratios": self.ratios,
                "targets": [vars(t) for t in self.targets]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _raise_file_limit()
    wrk = shutil.which("wrk")
    if not wrk:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    report = Report(started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=_machine(),
                    options=vars(args))
    work = Path(tempfile.mkdtemp(prefix="taskapi-bench-"))
    try:
        with BenchDatabase(keep=args.keep, log=_log) as db:
            report.machine["postgres"] = db.server_version
            _log(f"seeding {args.users:,} users x {args.tasks_per_user} tasks")
            seconds = seed(db.admin, args.users, args.tasks_per_user)
            _log(f"seeded {args.users * args.tasks_per_user:,} rows in {seconds:.1f}s")
            checked = check_explicit_where(db.app, db.admin, [user_id(1), user_id(args.users // 2 + 1),
                                                              user_id(args.users)])
            _log(checked)
            secret = secrets.token_urlsafe(32)
            data = write_wrk_data(work, db.admin, secret, args.users, args.tasks_per_user)
            with JwksServer() as jwks:
                env = {"DATABASE_URL": db.app, "JWT_SECRET": secret, "JWT_JWKS_URL": jwks.url,
                       "WORKERS": str(args.workers), "DB_POOL_SIZE": str(args.pool_size), "LOG_LEVEL": args.log_level}
                with BenchServer(env, work / "server.log") as server:
                    minters = {"list_cold": hs256_minter(secret), "list_jwks": jwks.minter()}
                    report.results += _load(wrk, server, args, data, minters)
                    report.results += _baselines(db, args, work, checked)
                    if args.idle_connections:
                        report.results.append(_many_connections(wrk, server, args, data))
                for result in report.results:
                    if result.name == "list_jwks":
                        result.note = f"JWKS fetched {jwks.fetches} time(s) in all"
        report.machine["load_after"] = os.getloadavg()
        _evaluate(report, args)
        print(_markdown(report))
        out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"{report.started.replace(':', '')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=2))
        _log(f"JSON written to {out}")
        failed = [f"{r.name} c={r.concurrency}" for r in report.results if r.failure]
        if failed:
            kept = out.with_suffix(".server.log")
            shutil.copyfile(work / "server.log", kept)
            _log(f"FAILED: {', '.join(failed)}; the server's log is in {kept}")
            return 1
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 users x 100 tasks, 3 runs of 2 s per scenario")
    parser.add_argument("--users", type=int, default=None, help="default 10,000 (1,000 with --quick)")
    parser.add_argument("--tasks-per-user", type=int, default=100)
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (default 10, quick 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario, interleaved (default 3)")
    parser.add_argument("--warm-up", type=int, default=None, help="seconds of list load first (default 30, quick 5)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    # 2 workers x 4 connections measured best on a 2-core machine that also runs PostgreSQL and wrk:
    # more backends than cores only adds context switches and a longer latency tail.
    parser.add_argument("--pool-size", type=int, default=int(os.environ.get("DB_POOL_SIZE", "4")))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--light-scenarios", default=",".join(LIGHT_SCENARIOS),
                        help="scenarios also run at concurrency 4 (comma-separated; empty skips)")
    parser.add_argument("--cold-scenarios", default=",".join(COLD_SCENARIOS),
                        help="list with a first-seen token per request: list_cold (HS256), list_jwks (EdDSA)")
    parser.add_argument("--idle-connections", type=int, default=None,
                        help="keep-alive connections held at a low rate (default 10,000; quick 2,000; 0 skips)")
    parser.add_argument("--idle-seconds", type=int, default=None, help="default 30 (quick 10)")
    parser.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (INFO: one line per request)")
    parser.add_argument("--json", default=None, help="where to write the JSON result")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    args = parser.parse_args(argv)
    args.users = args.users or (1_000 if args.quick else 10_000)
    args.duration = args.duration or (2 if args.quick else 10)
    # Long enough for ~5 uses of each user's token: each worker has then cached nearly all of them.
    args.warm_up = args.warm_up if args.warm_up is not None else (5 if args.quick else 30)
    if args.idle_connections is None:
        args.idle_connections = 2_000 if args.quick else 10_000
    args.idle_seconds = args.idle_seconds or (10 if args.quick else 30)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.light_scenarios = [s for s in args.light_scenarios.split(",") if s]
    args.cold_scenarios = [s for s in args.cold_scenarios.split(",") if s]
    unknown = (set(args.scenarios) | set(args.light_scenarios)) - set(SCENARIOS)
    unknown |= set(args.cold_scenarios) - set(COLD_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


# --- load -------------------------------------------------------------------------------------------------

def _load(wrk: str, server: BenchServer, args: argparse.Namespace, data: Path,
          minters: dict[str, Minter]) -> list[Result]:
    """Every wrk scenario, --rounds times, round by round (list first: it sizes the cold token files)."""
    plan = ([(name, args.concurrency) for name in args.scenarios] + [(name, 4) for name in args.light_scenarios]
            + [(name, args.concurrency) for name in args.cold_scenarios])
    results = {key: Result(name=key[0], concurrency=key[1]) for key in plan}
    if args.warm_up:
        # Caches, pools, prepared statements and the token cache in their steady state.
        warm = _wrk_run(wrk, server, "list", args.concurrency, args.warm_up, data, next_delete=1)
        _log(f"warm-up: {warm.ok_per_s:,.0f} 2xx/s" + (f" FAILED: {warm.failure}" if warm.failure else ""))
    next_delete = 1
    for round_ in range(1, args.rounds + 1):
        for name, concurrency in plan:
            tokens = None
            if name in minters:
                listed = results.get(("list", args.concurrency))
                rate = max(listed.runs[-1].ok_per_s if listed and listed.runs else 0, COLD_TOKENS_MIN_RATE)
                count = math.ceil(2 * rate * args.duration) + 4 * concurrency
                tokens = write_cold_tokens(data / f"{name}.txt", count, args.users, minters[name])
            run = _wrk_run(wrk, server, name, concurrency, args.duration, data, next_delete=next_delete,
                           tokens=tokens)
            if name == "delete":
                next_delete = max(next_delete, run.extra.get("max_delete", 0) + 1)
            result = results[(name, concurrency)]
            result.runs.append(run)
            result.peak_rss_mb = server.peak_rss_mb()
            _log(f"round {round_}: {name} c={concurrency}: {run.ok_per_s:,.0f} 2xx/s, p99 {run.p99_ms or 0:.2f} ms"
                 + (f", FAILED: {run.failure}" if run.failure else ""))
    return list(results.values())


def _wrk_run(wrk: str, server: BenchServer, name: str, concurrency: int, seconds: int, data: Path, *,
             next_delete: int, tokens: Path | None = None) -> Run:
    threads = min(2, concurrency)
    cpu_before = server.cpu_seconds()
    run = run_wrk(wrk, url=server.base_url, threads=threads, connections=concurrency, seconds=seconds,
                  script=SCENARIOS_LUA, script_args=[name, str(data), str(threads), str(next_delete),
                                                     *([str(tokens)] if tokens else [])])
    if run.responses:
        run.cpu_us_per_request = (server.cpu_seconds() - cpu_before) / run.responses * 1e6
    if not server.alive():
        run.fail("the server is not answering /health after the run")
    return run


def _many_connections(wrk: str, server: BenchServer, args: argparse.Namespace, data: Path) -> Result:
    """Hold `idle_connections` keep-alive connections for `idle_seconds`, each asking about every 20 s."""
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):  # sampling, not synchronising
            rss.append(server.peak_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run = run_wrk(wrk, url=server.base_url, threads=2, connections=args.idle_connections, seconds=args.idle_seconds,
                  script=IDLE_LUA, script_args=[str(data), "20000"], timeout_s=15)
    stop.set()
    sampler.join()
    if not server.alive():
        run.fail("the server did not survive")
    return Result(name=f"{args.idle_connections:,} keep-alive connections, {args.idle_seconds}s",
                  concurrency=args.idle_connections, runs=[run], peak_rss_mb=max(rss, default=server.peak_rss_mb()),
                  note="one run: a survival check, not a rate")


def _baselines(db: BenchDatabase, args: argparse.Namespace, work: Path, checked: str) -> list[Result]:
    """The two pgbench baselines, alternated --rounds times, each reported by its medians."""
    variants = [(Result(FLOOR, args.concurrency), floor_script(explicit=False, user_prefix=USER_PREFIX,
                                                                users=args.users), db.app),
                (Result(EXPLICIT_WHERE, args.concurrency, note=checked),
                 floor_script(explicit=True, user_prefix=USER_PREFIX, users=args.users), db.admin)]
    for round_ in range(1, args.rounds + 1):
        for result, script, dsn in variants:
            run = run_pgbench(db.pgbench, dsn=dsn, script=script, clients=args.concurrency, seconds=args.duration,
                              work=work)
            result.runs.append(run)
            _log(f"round {round_}: {result.name}: {run.ok_per_s:,.0f} tps, p99 {run.p99_ms or 0:.2f} ms"
                 + (f", FAILED: {run.failure}" if run.failure else ""))
    return [result for result, _, _ in variants]


# --- report -----------------------------------------------------------------------------------------------

def _evaluate(report: Report, args: argparse.Namespace) -> None:
    """Ratios and the issue's targets, from results that did not fail; a failed one meets no target."""
    by = {(r.name, r.concurrency): r for r in report.results}
    c = args.concurrency
    list_ = by.get(("list", c))
    floor = by.get((FLOOR, c))
    where = by.get((EXPLICIT_WHERE, c))

    def ratio(name: str, top: Result | None, bottom: Result | None) -> None:
        if top and bottom and not top.failure and not bottom.failure and bottom.ok_per_s:
            report.ratios[name] = top.ok_per_s / bottom.ok_per_s

    ratio("list / pgbench floor", list_, floor)
    ratio("RLS floor / explicit-WHERE floor", floor, where)
    ratio("list, a first-seen HS256 token each (list_cold) / list", by.get(("list_cold", c)), list_)
    ratio("list, a first-seen EdDSA token each (list_jwks) / list", by.get(("list_jwks", c)), list_)

    def target(name: str, results: list[Result | None], check: Callable[[], tuple[bool, str]]) -> None:
        """Add a target; `check()` (met, what was measured) runs only when no result failed."""
        if any(r is None for r in results):
            return  # a scenario not run (--scenarios): no target
        failed = [f"{r.name} c={r.concurrency}" for r in results if r is not None and r.failure]
        if failed:
            report.targets.append(Target(name, "FAILED: " + ", ".join(failed), False))
        else:
            met, measured = check()
            report.targets.append(Target(name, measured, met))

    def p99_target(name: str, result: Result | None, limit_ms: float) -> None:
        target(name, [result], lambda: ((result.p99_ms or math.inf) <= limit_ms if result else False,
                                        f"p99 {_num(result.p99_ms if result else None)} ms"))

    if list_:
        target("list c=32 >= 2,000 2xx/s, zero errors", [list_],
               lambda: (list_.ok_per_s >= 2000, f"{list_.ok_per_s:,.0f} 2xx/s"))
        share = report.ratios.get("list / pgbench floor", 0.0)
        target("list >= 35 % of pgbench floor", [list_, floor], lambda: (share >= 0.35, f"{share:.0%}"))
        cpu = list_.cpu_us_per_request
        target("server CPU <= 500 µs per list request", [list_],
               lambda: ((cpu or math.inf) <= 500, f"{_num(cpu, 0)} µs"))
    for name in args.light_scenarios:
        limit = 5.0 if name in ("list", "get") else 8.0
        p99_target(f"{name} c=4 p99 <= {limit:g} ms", by.get((name, 4)), limit)
    for name in args.scenarios:
        p99_target(f"{name} c={c}: zero errors, p99 <= 50 ms", by.get((name, c)), 50.0)
    rls = report.ratios.get("RLS floor / explicit-WHERE floor", 0.0)
    target(f"RLS within 10 % of explicit WHERE ({args.users * args.tasks_per_user:,} rows)", [floor, where],
           lambda: (rls >= 0.9, f"{rls:.0%}"))
    under_load = [r.peak_rss_mb for r in report.results if r.peak_rss_mb is not None and "keep-alive" not in r.name]
    if under_load:
        peak = max(under_load)
        target("peak RSS <= 90 MB per worker under load", [], lambda: (peak <= 90, f"{peak:.1f} MB"))
    idle = next((r for r in report.results if "keep-alive" in r.name), None)
    if idle:
        target(f"{idle.concurrency:,} keep-alive connections: no errors, no crash", [idle],
               lambda: (True, "no errors, server alive"))


def _markdown(report: Report) -> str:
    options = report.options
    load = f"{_load_average(report.machine, 'load_before')} before, {_load_average(report.machine, 'load_after')} after"
    lines = [f"## taskapi benchmark, {report.started}", "",
             f"{report.machine['cpus']} CPUs, Python {report.machine['python']}, "
             f"PostgreSQL {report.machine.get('postgres', '?')}; "
             f"{options['users']:,} users x {options['tasks_per_user']} tasks, "
             f"{options['workers']} workers x pool {options['pool_size']}, "
             f"{options['rounds']} runs of {options['duration']} s per scenario (medians), "
             f"server LOG_LEVEL={options['log_level']}; 1-minute load average {load}", "",
             "| scenario | conc. | 2xx/s (tps) | each run | p50 ms | p99 ms | non-2xx | socket errors "
             "| server CPU µs/req | peak RSS MB/worker | status |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report.results:
        status = f"**FAILED**: {r.failure}" if r.failure else "ok"
        if r.note:
            status += f"; {r.note}"
        lines.append(" | ".join([
            f"| {r.name}", str(r.concurrency), f"{r.ok_per_s:,.0f}",
            ", ".join(f"{run.ok_per_s:,.0f}" for run in r.runs), _num(r.p50_ms), _num(r.p99_ms), str(r.not_ok),
            str(r.socket_errors), _num(r.cpu_us_per_request, 0), _num(r.peak_rss_mb, 1), f"{status} |"]))
    lines += ["", "| ratio (medians) | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.0%} |" for name, value in report.ratios.items()]
    lines += ["", "| target | measured | met |", "| --- | --- | :---: |"]
    lines += [f"| {t.target} | {t.measured} | {'yes' if t.met else '**no**'} |" for t in report.targets]
    return "\n".join(lines)


def _load_average(machine: dict[str, Any], key: str) -> str:
    """The 1-minute load average recorded under `key`: how much else the machine was doing."""
    values = machine.get(key)
    return f"{values[0]:.1f}" if values else "?"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_before": os.getloadavg()}


def _raise_file_limit() -> None:
    """Room for --idle-connections sockets (wrk's and the server's, both children of this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65_536 if hard == resource.RLIM_INFINITY else min(65_536, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
