"""`python -m bench.client`: the hand-written wire client (api/pipeline.py) against psycopg's own pipeline.

Both run the API's two statements for one request — SET_REQUEST_CONTEXT and a handler's statement —
through the same pool, in one pipeline with one Sync, prepared once per connection, and take the
handler's result as the bytes PostgreSQL sent (psycopg's ``cursor.pgresult``, so neither converts the
JSON). What differs is only the client code in between. Client CPU time per call is the number that
decides (wall time includes the server and the network, the same for both). Alternated runs, medians.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api import embedded
from api.config import Settings
from api.db import SET_REQUEST_CONTEXT, Database
from api.listing import LIST_TASKS
from api.migrate import migrate
from api.pipeline import Params, Statement
from api.tasks import GET_TASK

USER = "bench-client-user"
PASSWORD = "bench-client-" + uuid.uuid4().hex[:12]

Call = Callable[[], Awaitable[bytes | None]]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="calls per measurement (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated measurements per client (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taskapi-bench-client-") as folder:
        server = embedded.start(Path(folder) / "pgdata")
        try:
            admin = server.dsn()
            dbname = "bench_client_" + uuid.uuid4().hex[:8]
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            admin_db = make_conninfo(admin, dbname=dbname)
            migrate(admin_db, app_password=PASSWORD)
            task_id = _seed(admin_db)
            parts = conninfo_to_dict(admin_db)
            parts.update(user="taskapi_app", password=PASSWORD)
            app_dsn = make_conninfo(**{k: str(v) for k, v in parts.items() if v is not None})
            uvloop.run(_measure(app_dsn, task_id, args.calls, args.rounds))
        finally:
            server.stop()


def _seed(admin_dsn: str) -> uuid.UUID:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO taskapi.tasks (user_id, title, description) SELECT %s, 'Task ' || g,"
                     " CASE WHEN g %% 3 = 0 THEN 'A description for task ' || g END"
                     " FROM generate_series(1, 200) AS g", [USER])
        row = conn.execute("SELECT id FROM taskapi.tasks LIMIT 1").fetchone()
        assert row is not None
        task_id: uuid.UUID = row[0]
        return task_id


async def _measure(app_dsn: str, task_id: uuid.UUID, calls: int, rounds: int) -> None:
    settings = Settings(database_url=app_dsn, jwt_secret="x" * 32, db_pool_size=1)
    db = Database(settings)
    await db.pool.open(wait=True)
    try:
        cases: list[tuple[str, Statement, Params]] = [
            ("list (50 tasks)", LIST_TASKS, {"completed": None, "limit": 50, "offset": 0}),
            ("get", GET_TASK, {"id": task_id}),
        ]
        print("| statement | client | client CPU µs/call (median) | wall µs/call (median) |")
        print("| --- | --- | ---: | ---: |")
        for label, statement, params in cases:
            clients: dict[str, Call] = {
                "api/pipeline.py": _hand_written(db, statement, params),
                "psycopg pipeline": _psycopg(db, statement, params),
            }
            answers = {name: await call() for name, call in clients.items()}
            if len(set(answers.values())) != 1 or None in answers.values():
                raise SystemExit(f"{label}: the clients disagree, nothing to compare: {answers}")
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
            for _ in range(rounds):
                for name, call in clients.items():
                    samples[name].append(await _time(call, calls))
            for name, measured in samples.items():
                cpu = statistics.median(m[0] for m in measured)
                wall = statistics.median(m[1] for m in measured)
                print(f"| {label} | {name} | {cpu:.1f} | {wall:.1f} |")
    finally:
        await db.pool.close()


def _hand_written(db: Database, statement: Statement, params: Params) -> Call:
    async def call() -> bytes | None:
        row = await db.fetch_one(USER, statement, params)
        return None if row is None else row[0]

    return call


def _psycopg(db: Database, statement: Statement, params: Params) -> Call:
    context = {"claims": f'{{"sub": "{USER}"}}', "statement_timeout": "5000"}

    async def call() -> bytes | None:
        conn: AsyncConnection[Any]
        async with db.pool.connection() as conn:
            async with conn.pipeline():
                await conn.execute(SET_REQUEST_CONTEXT.sql, context, prepare=True)
                cur = await conn.execute(statement.sql, params, prepare=True)
            result = cur.pgresult
            return None if result is None or result.ntuples == 0 else result.get_value(0, 0)

    return call


async def _time(call: Call, calls: int) -> tuple[float, float]:
    for _ in range(min(200, calls)):  # warm up: prepare, fill caches
        await call()
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (_cpu() - cpu0) / calls * 1e6, (time.perf_counter() - wall0) / calls * 1e6


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
