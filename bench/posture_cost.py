"""`python -m bench.posture_cost`: what one posture check (``taskapi_audit.findings()``) costs.

Issue #9: the check must stay cheap enough to run every few seconds. This measures it on a freshly
migrated database, again with 1,000,000 tasks, and again with 1,000 other objects (tables, views and
functions in other schemas), as the runtime role, the way the posture guard runs it. Each figure is
the median of `--calls` calls timed by the client (one round trip each, on a local socket). Prints a
Markdown table; the database it creates is dropped at the end.

    .venv/bin/python -m bench.posture_cost [--dsn SUPERUSER_DSN] [--tasks N] [--objects N] [--calls N]

Without --dsn it uses the embedded PostgreSQL in .taskapi/bench-pg (started and stopped here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api import embedded
from api.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent

FINDINGS: LiteralString = "SELECT count(*) FROM taskapi_audit.findings()"
LIVE_MANIFEST: LiteralString = "SELECT count(*) FROM taskapi_audit.live_manifest()"
SEED_TASKS: LiteralString = """
    INSERT INTO taskapi.tasks (user_id, title, completed)
    SELECT 'cost-user-' || (n %% 10000), 'Task ' || n, n %% 4 = 0 FROM generate_series(1, %(tasks)s) AS n
"""
# The "other objects": in schemas cost_0 .. cost_19, `batches` tables (each with its primary key
# index), a view over each and a function reading each. Sent without parameters: % is format()'s.
OTHER_OBJECTS = sql.SQL("""
    DO $$
    BEGIN
        FOR i IN 1..{batches} LOOP
            EXECUTE format('CREATE SCHEMA IF NOT EXISTS cost_%s', i % 20);
            EXECUTE format('CREATE TABLE cost_%s.t%s (id int PRIMARY KEY, note text)', i % 20, i);
            EXECUTE format('CREATE VIEW cost_%s.v%s AS SELECT id, note FROM cost_%s.t%s', i % 20, i, i % 20, i);
            EXECUTE format('CREATE FUNCTION cost_%s.f%s() RETURNS bigint LANGUAGE sql STABLE '
                           'AS ''SELECT count(*) FROM cost_%s.t%s''', i % 20, i, i % 20, i);
        END LOOP;
    END
    $$
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.posture_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="superuser DSN of the server to measure on (default: embedded)")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=1_000, help="other objects (rounded to a multiple of 3)")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    server = None
    cluster_admin = args.dsn
    if cluster_admin is None:
        server = embedded.start(ROOT / ".taskapi" / "bench-pg")
        cluster_admin = server.dsn()
    name = f"taskapi_cost_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(cluster_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        try:
            rows = _measure(make_conninfo("", **{**conninfo_to_dict(cluster_admin), "dbname": name}), args)
        finally:
            with psycopg.connect(cluster_admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        if server is not None:
            server.stop()
    print(f"PostgreSQL {version}; median of {args.calls} calls each, as taskapi_app\n")
    print("| database | `findings()` | `live_manifest()` | rows in `live_manifest()` |")
    print("| --- | --- | --- | --- |")
    for label, findings_ms, manifest_ms, entries in rows:
        print(f"| {label} | {findings_ms:.1f} ms | {manifest_ms:.1f} ms | {entries} |")
    return 0


def _measure(admin_dsn: str, args: argparse.Namespace) -> list[tuple[str, float, float, int]]:
    migrate(admin_dsn)
    rows = [("freshly migrated", *_time(admin_dsn, args.calls))]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(SEED_TASKS, {"tasks": args.tasks})
        conn.execute("VACUUM (ANALYZE) taskapi.tasks")
    rows.append((f"with {args.tasks:,} tasks", *_time(admin_dsn, args.calls)))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(OTHER_OBJECTS.format(batches=sql.Literal(args.objects // 3)))
    rows.append((f"and {args.objects // 3 * 3:,} other objects in 20 other schemas", *_time(admin_dsn, args.calls)))
    return rows


def _time(admin_dsn: str, calls: int) -> tuple[float, float, int]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE taskapi_app")
        found = conn.execute(FINDINGS).fetchone()[0]  # type: ignore[index]
        if found:
            print(f"warning: findings() returned {found} rows", file=sys.stderr)
        entries = conn.execute(LIVE_MANIFEST).fetchone()[0]  # type: ignore[index]
        return _median_ms(conn, FINDINGS, calls), _median_ms(conn, LIVE_MANIFEST, calls), entries


def _median_ms(conn: psycopg.Connection, query: LiteralString, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        conn.execute(query).fetchone()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


if __name__ == "__main__":
    sys.exit(main())
