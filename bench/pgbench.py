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
from api.listing import LIST_TASKS
from bench.measure import Run

# A table of the schema, as the statement names it: not a function call (taskapi.task_json(...)).
_TABLE = re.compile(r"\btaskapi\.(\w+)\b(?!\s*\()")
# Reading one: `FROM taskapi.<table>`, with or without `AS <alias>`.
_FROM_TABLE = re.compile(r"\bFROM\s+taskapi\.(\w+)\b(?!\s*\()(?:\s+AS\s+(\w+))?")


class BaselineError(Exception):
    """The baseline cannot be derived or does not match the API's statement."""


def explicit_where(statement_sql: str) -> str:
    """`statement_sql` with every table it reads narrowed to the caller's rows (`%(user_id)s`).

    Each `FROM taskapi.<table> [AS <alias>]` gets `JOIN (SELECT) AS own_<alias> ON <alias>.user_id =
    %(user_id)s`: the policies' predicate (user_id = taskapi.current_user_id(), see sql/policies/)
    written out as a condition on the table itself, which keeps its name and its row type (a
    statement may pass the whole row on, as LIST_TASKS does to taskapi.task_json). PostgreSQL drops
    the empty one-row join and plans a plain `WHERE` (checked by `check_explicit_where`). Raises
    `BaselineError` unless every table the statement names is read by such a FROM: a join or a table
    used another way needs a new transformation, not a quietly wrong baseline.
    """
    mentions = len(_TABLE.findall(statement_sql))

    def narrow(match: re.Match[str]) -> str:
        alias = match[2] or match[1]
        return f"{match[0]} JOIN (SELECT) AS own_{alias} ON {alias}.user_id = %(user_id)s"

    variant, replaced = _FROM_TABLE.subn(narrow, statement_sql)
    if replaced == 0 or replaced != mentions:
        raise BaselineError(f"{replaced} of the {mentions} tables the statement names are read by a plain "
                            "FROM: the explicit-WHERE variant cannot be derived")
    return variant


def check_explicit_where(app_dsn: str, admin_dsn: str, user_ids: list[str]) -> str:
    """Prove the variant equivalent on the seeded data; return a one-line account of the check.

    For each user (and each `completed` filter, when the statement has one), the API's statements as
    taskapi_app (RLS) and the variant as the admin (no RLS) must return the same row, one that holds
    the user's tasks; and the variant's plan must have no more joins than LIST_TASKS's (the narrowing
    joins are gone: a plain WHERE to the planner).
    """
    # As bytes: made of LIST_TASKS and our own text, but no longer a LiteralString.
    variant = explicit_where(LIST_TASKS.sql).encode()
    filters: tuple[bool | None, ...] = (None, True, False) if "completed" in LIST_TASKS.param_names else (None,)
    compared = 0
    # prepare_threshold=None: no server-side prepared statements, which a transaction-mode pooler may lose.
    with psycopg.connect(app_dsn, prepare_threshold=None) as app, \
            psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None) as admin:
        for user_id in user_ids:
            for completed in filters:
                params = _list_params(user_id, completed)
                try:
                    with app.transaction():
                        app.execute(SET_REQUEST_CONTEXT.sql, _context_params(user_id))
                        expected = app.execute(LIST_TASKS.sql, params).fetchone()
                    got = admin.execute(variant, params).fetchone()
                except psycopg.Error as exc:
                    raise BaselineError(f"running the statements failed: {exc}") from exc
                if got != expected:
                    raise BaselineError(f"the explicit-WHERE variant differs from LIST_TASKS for {user_id!r}, "
                                        f"completed={completed}")
                if expected is None or user_id not in str(expected[0]):
                    raise BaselineError(f"LIST_TASKS shows no task of {user_id!r}: the check would compare nothing")
                compared += 1
        joins = [_joins(admin, statement, _list_params(user_ids[0], None))
                 for statement in (variant, LIST_TASKS.sql.encode())]
    if joins[0] != joins[1]:
        raise BaselineError(f"the variant's plan has {joins[0]} joins, LIST_TASKS's {joins[1]}: the planner kept "
                            "the narrowing joins, the variant is not a plain WHERE")
    return f"explicit-WHERE variant = LIST_TASKS under RLS on {compared} lists, no join added to its plan"


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
    return re.sub(r"%\((\w+)\)s", lambda m: values[m[1]], _colons_spelled_out(one_line))


# A string literal, with the E of an escape string literal if it has one.
_LITERAL = re.compile(r"(?<![\w$])([Ee]?)'((?:[^']|'')*)'")


def _colons_spelled_out(sql_text: str) -> str:
    """`sql_text` with each colon inside a string literal written as `chr(58)`.

    pgbench reads `:name` as one of its variables even inside quotes, so to_char's 'HH24:MI:SS' would
    become parameters; `('HH24' || chr(58) || 'MI' ...)` is the same constant, folded when planned.
    """
    def spell(match: re.Match[str]) -> str:
        prefix, body = match[1], match[2]
        if ":" not in body:
            return match[0]
        if prefix:
            raise BaselineError(f"a colon in an escape string literal cannot be spelled out: {match[0]}")
        return "(" + " || chr(58) || ".join(f"'{part}'" for part in body.split(":")) + ")"

    return _LITERAL.sub(spell, sql_text)


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


def _list_params(user_id: str, completed: bool | None) -> dict[str, Any]:
    """LIST_TASKS's parameters for a default list request by `user_id`."""
    values: dict[str, Any] = {"user_id": user_id, "completed": completed, "limit": 50, "offset": 0}
    unknown = set(LIST_TASKS.param_names) - set(values)
    if unknown:
        raise BaselineError(f"LIST_TASKS has parameters the baseline does not know: {', '.join(sorted(unknown))}")
    return {name: values[name] for name in LIST_TASKS.param_names}


def _joins(conn: psycopg.Connection[Any], statement: bytes, params: dict[str, Any]) -> int:
    """How many join nodes the plan of `statement` has."""
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
    return json.dumps(row[0] if row else None).count('"Join Type"')


def _context_params(user_id: str) -> dict[str, Any]:
    return {"claims": json.dumps({"sub": user_id}), "statement_timeout": "5000"}
