"""The database floor: pgbench sending what the API sends for a list request, with and without RLS.

Both scripts are made from the statements the API runs (`api.db.SET_REQUEST_CONTEXT` and
`api.tasks.LIST_TASKS`), never from a copy: the floor runs them as they are, as taskapi_app; the
explicit-WHERE variant is LIST_TASKS with each read of taskapi.tasks narrowed to the caller's rows
(`explicit_where`), run as a role past RLS. Before it is used, `check_explicit_where` proves on the
seeded data that the variant returns byte for byte what the API's statement returns under RLS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from api.db import SET_REQUEST_CONTEXT
from api.tasks import LIST_TASKS
from bench.measure import Run

TABLE = "taskapi.tasks"
# The policies' predicate (sql/policies/tasks.sql: user_id = taskapi.current_user_id()), written out.
OWN_ROWS = f"(SELECT * FROM {TABLE} WHERE user_id = %(user_id)s) AS tasks"


class BaselineError(Exception):
    """The baseline cannot be derived or does not match the API's statement."""


def explicit_where(statement_sql: str) -> str:
    """`statement_sql` with every `FROM taskapi.tasks` reading only the caller's rows (`%(user_id)s`).

    Each `FROM taskapi.tasks` becomes `FROM (SELECT * FROM taskapi.tasks WHERE user_id = ...) AS tasks`:
    the same columns under the same name, so the rest of the statement is untouched, and PostgreSQL
    pulls the subquery up into a plain `WHERE user_id = ...` (checked by `check_explicit_where`).
    Raises `BaselineError` unless every mention of the table is such a FROM: a join, a CTE or a
    schema change would need a new transformation, not a silently wrong baseline.
    """
    mentions = len(re.findall(rf"\b{re.escape(TABLE)}\b", statement_sql))
    variant, replaced = re.subn(rf"\bFROM\s+{re.escape(TABLE)}\b(?!\s+AS\b)", f"FROM {OWN_ROWS}", statement_sql)
    if replaced == 0 or replaced != mentions:
        raise BaselineError(f"{replaced} of the {mentions} mentions of {TABLE} are a plain FROM {TABLE}: "
                            "the explicit-WHERE variant cannot be derived")
    if "%(user_id)s" in statement_sql:
        raise BaselineError("the statement already has a user_id parameter")
    return variant


def check_explicit_where(app_dsn: str, admin_dsn: str, user_ids: list[str]) -> str:
    """Prove the variant equivalent on the seeded data; return a one-line account of the check.

    For each user and each `completed` filter (none, true, false), the API's statements as
    taskapi_app (RLS) and the variant as the admin (no RLS) must return the same text, and the
    variant's plan must have no subquery scan left (it is a plain WHERE to the planner).
    """
    # As bytes: built from two literals (LIST_TASKS and OWN_ROWS), but no longer a LiteralString.
    variant = explicit_where(LIST_TASKS.sql).encode()
    compared = 0
    # prepare_threshold=None: no server-side prepared statements, which a transaction-mode pooler may lose.
    with psycopg.connect(app_dsn, prepare_threshold=None) as app, \
            psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None) as admin:
        for user_id in user_ids:
            for completed in (None, True, False):
                params: dict[str, Any] = {"completed": completed, "limit": 50, "offset": 0}
                with app.transaction():
                    app.execute(SET_REQUEST_CONTEXT.sql, {"claims": json.dumps({"sub": user_id}),
                                                          "statement_timeout": "5000"})
                    expected = _one(app.execute(LIST_TASKS.sql, params).fetchone())
                got = _one(admin.execute(variant, {**params, "user_id": user_id}).fetchone())
                if got != expected:
                    raise BaselineError(f"the explicit-WHERE variant differs from LIST_TASKS for {user_id!r}, "
                                        f"completed={completed}")
                if '"total_count" : 0' in expected or '"total_count": 0' in expected:
                    raise BaselineError(f"user {user_id!r} has no tasks: the check would compare empty lists")
                compared += 1
        plan = _one(admin.execute(b"EXPLAIN (FORMAT JSON) " + variant,
                                  {"completed": None, "limit": 50, "offset": 0, "user_id": user_ids[0]}).fetchone())
    if "Subquery Scan" in json.dumps(plan):
        raise BaselineError("the planner kept the variant's subquery: it is not a plain WHERE")
    return f"explicit-WHERE variant = LIST_TASKS under RLS on {compared} lists, subquery flattened"


def floor_script(*, explicit: bool, user_prefix: str, users: int) -> str:
    """A pgbench script sending what the API sends for a default list request (run with -M prepared).

    The two statements as prepared statements in one pipeline with one Sync, like api.db. pgbench
    variables can only be numbers, so the user id is built in SQL from a random user number, and
    `completed` (NULL) is written as a literal.
    """
    sub = f"'{user_prefix}' || :u"
    context = _pgbench_sql(SET_REQUEST_CONTEXT.sql, {"claims": f"""'{{"sub": "' || {sub} || '"}}'""",
                                                     "statement_timeout": "'5000'"})
    statement = explicit_where(LIST_TASKS.sql) if explicit else LIST_TASKS.sql
    query = _pgbench_sql(statement, {"completed": "NULL", "limit": ":limit", "offset": ":offset",
                                     "user_id": f"({sub})"})
    return "\n".join([f"\\set u random(1, {users})", "\\set limit 50", "\\set offset 0", "\\startpipeline",
                      f"{context};", f"{query};", "\\endpipeline", ""])


def run_pgbench(pgbench: str, *, dsn: str, script: str, clients: int, seconds: int, work: Path) -> Run:
    """Run pgbench once; failed (see `Run.failure`) on a non-zero exit, unreadable output or any failed transaction."""
    name = f"pgbench-{os.getpid()}-{len(list(work.glob('pgbench-*.sql')))}"
    path = work / f"{name}.sql"
    path.write_text(script)
    parts = conninfo_to_dict(dsn)
    env = {**os.environ, "PGPASSWORD": str(parts.get("password") or "")}
    command = [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(path),
               "-l", "--log-prefix", str(work / name), "-h", str(parts.get("host") or "127.0.0.1"),
               "-p", str(parts.get("port") or 5432), "-U", str(parts["user"]), str(parts["dbname"])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work, timeout=seconds + 120)
    latencies = sorted(_latencies_us(work, name))
    return parse(done.returncode, done.stdout, done.stderr, latencies, seconds)


def parse(returncode: int, stdout: str, stderr: str, latencies_us: list[int], seconds: int) -> Run:
    """A `Run` from pgbench's exit status, its summary and its per-transaction latencies."""
    run = Run(seconds=float(seconds))
    if returncode != 0:
        run.fail(f"pgbench exited with status {returncode}: {(stderr or stdout).strip()[-200:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", stdout)
    if tps is None or processed is None:
        run.fail("no tps or transaction count in pgbench's output")
        return run
    failed = re.search(r"number of failed transactions: (\d+)", stdout)  # pgbench 15 and later
    run.responses = int(processed[1])
    failures = int(failed[1]) if failed else 0
    run.ok = run.responses - failures
    run.ok_per_s = float(tps[1]) * (run.ok / run.responses) if run.responses else 0.0
    if failures:
        run.not_ok = {"failed": failures}
        run.fail(f"{failures} failed transactions")
    if run.responses == 0:
        run.fail("no transaction processed")
    if latencies_us:
        run.p50_ms = latencies_us[len(latencies_us) // 2] / 1000
        run.p99_ms = latencies_us[min(len(latencies_us) - 1, int(len(latencies_us) * 0.99))] / 1000
    else:
        run.fail("no per-transaction log")
    return run


def _pgbench_sql(sql_text: str, values: dict[str, str]) -> str:
    """`sql_text` on one line, its %(name)s parameters replaced by pgbench expressions."""
    one_line = " ".join(line.strip() for line in sql_text.splitlines() if line.strip())
    return re.sub(r"%\((\w+)\)s", lambda m: values[m[1]], one_line)


def _latencies_us(work: Path, name: str) -> list[int]:
    """The third field of each line of pgbench's per-transaction logs (-l), removed once read."""
    values = []
    for log in work.glob(f"{name}.*"):
        if log.suffix == ".sql":
            continue
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                values.append(int(fields[2]))
        log.unlink()
    return values


def _one(row: tuple[Any, ...] | None) -> Any:
    if row is None:
        raise BaselineError("a statement returned no row")
    return row[0]
