"""The wire client (api/pipeline.py) on its own: one transaction per pipeline, and what a failure leaves behind.

These talk to PostgreSQL directly (never through the test pooler), as the admin role: the client does not
care who it is, and the tests need to see and end each other's backends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, pq

from api import pipeline
from api.config import Settings
from api.db import Database as ApiDatabase
from api.errors import ServiceUnavailable
from api.pipeline import Statement
from conftest import JWT_SECRET, Database

CREATE_SCRATCH = "CREATE TABLE IF NOT EXISTS public.pipeline_scratch (id int PRIMARY KEY, note text)"
INSERT = Statement("INSERT INTO public.pipeline_scratch (id, note) VALUES (%(id)s, %(note)s) RETURNING id")
COUNT = Statement("SELECT count(*) FROM public.pipeline_scratch WHERE id = %(id)s")
FAIL = Statement("SELECT 1 / %(zero)s")
# Each test that waits for its own statement in pg_stat_activity sleeps under its own name.
SLEEP_CANCELLED = Statement("SELECT pg_sleep(%(s)s) AS cancelled_request")
SLEEP_LOST = Statement("SELECT pg_sleep(%(s)s) AS lost_connection")
SLEEP_TIMED_OUT = Statement("SELECT pg_sleep(%(s)s) AS timed_out")
SLEEP_POOL_CANCELLED = Statement("SELECT pg_sleep(%(s)s) AS pool_cancelled_request")
SLEEP_POOL_LOST = Statement("SELECT pg_sleep(%(s)s) AS pool_lost_connection")
WHO = Statement("SELECT pg_backend_pid()")
SETTING = Statement("SELECT set_config('taskapi.test', %(v)s, true)")
READ_SETTING = Statement("SELECT current_setting('taskapi.test', true)")
ECHO = Statement("SELECT %(a)s::text, %(b)s::boolean, %(c)s::int, %(d)s::uuid, %(e)s::text[], %(f)s::timestamptz")


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def connect(database: Database) -> AsyncConnection[Any]:
    conn = await AsyncConnection.connect(database.admin_dsn, autocommit=True)
    await conn.execute(CREATE_SCRATCH)
    return conn


@pytest.fixture
def scratch_id() -> int:
    return uuid.uuid4().int % 2_000_000_000


async def _count(conn: AsyncConnection[Any], row_id: int) -> int:
    result = await pipeline.run(conn, [(COUNT, {"id": row_id})], prepared=None, reply_timeout=10)
    return int(pipeline.first_row(result)[0])  # type: ignore[index, arg-type]


def test_a_pipeline_is_one_transaction(database: Database, scratch_id: int):
    async def scenario() -> None:
        conn = await connect(database)
        # set_config(..., true) in the first statement is seen by the second: same transaction...
        result = await pipeline.run(conn, [(SETTING, {"v": "one"}), (READ_SETTING, {})], prepared=None,
                                    reply_timeout=10)
        assert pipeline.first_row(result) == (b"one",)
        # ...and gone in the next pipeline: transaction-local, never carried into another request.
        result = await pipeline.run(conn, [(READ_SETTING, {})], prepared=None, reply_timeout=10)
        assert pipeline.first_row(result) in ((None,), (b"",))
        await conn.close()

    run(scenario)


def test_a_failing_first_statement_aborts_the_rest(database: Database, scratch_id: int):
    async def scenario() -> None:
        conn = await connect(database)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await pipeline.run(conn, [(FAIL, {"zero": 0}), (INSERT, {"id": scratch_id, "note": "x"})],
                               prepared=None, reply_timeout=10)
        # The insert never ran, and the connection is usable: out of pipeline mode, idle, not broken.
        assert conn.pgconn.pipeline_status == pq.PipelineStatus.OFF
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert await _count(conn, scratch_id) == 0
        await conn.close()

    run(scenario)


def test_a_failing_last_statement_rolls_back_the_first(database: Database, scratch_id: int):
    async def scenario() -> None:
        conn = await connect(database)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await pipeline.run(conn, [(INSERT, {"id": scratch_id, "note": "x"}), (FAIL, {"zero": 0})],
                               prepared=set(), reply_timeout=10)
        assert await _count(conn, scratch_id) == 0  # one implicit transaction: all or nothing
        await conn.close()

    run(scenario)


def test_statements_are_prepared_once_and_a_failed_prepare_is_not_remembered(database: Database, scratch_id: int):
    async def scenario() -> None:
        conn = await connect(database)
        prepared: set[bytes] = set()
        await pipeline.run(conn, [(INSERT, {"id": scratch_id, "note": "x"})], prepared=prepared, reply_timeout=10)
        assert prepared == {INSERT.name}
        broken = Statement("SELEC 1")
        with pytest.raises(psycopg.errors.SyntaxError):
            await pipeline.run(conn, [(broken, {}), (COUNT, {"id": scratch_id})], prepared=prepared,
                               reply_timeout=10)
        assert prepared == {INSERT.name}  # neither the broken one nor the aborted COUNT
        result = await pipeline.run(conn, [(COUNT, {"id": scratch_id})], prepared=prepared, reply_timeout=10)
        assert pipeline.first_row(result) == (b"1",) and COUNT.name in prepared
        server_side = await conn.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
        assert {row[0].encode() for row in await server_side.fetchall()} == prepared
        await conn.close()

    run(scenario)


def test_parameters_use_psycopg_dumpers(database: Database):
    async def scenario() -> None:
        conn = await connect(database)
        when = dt.datetime(2026, 2, 28, 23, 59, 59, 123456, tzinfo=dt.UTC)
        task = uuid.uuid4()
        values = {"a": "it's \"quoted\" \\ and ünïcode", "b": False, "c": -7, "d": task,
                  "e": ["a", "b c", "d,\"e\"", "NULL"], "f": when}
        for prepared in (None, set()):
            result = await pipeline.run(conn, [(ECHO, values)], prepared=prepared, reply_timeout=10)
            row = pipeline.first_row(result)
            assert row is not None
            assert row[:4] == ("it's \"quoted\" \\ and ünïcode".encode(), b"f", b"-7", str(task).encode())
            assert row[4] == b'{a,"b c","d,\\"e\\"","NULL"}'  # NULL as a string stays a string
            assert row[5] is not None and row[5].startswith(b"2026-")
        none = await pipeline.run(conn, [(ECHO, dict.fromkeys(values))], prepared=None, reply_timeout=10)
        assert pipeline.first_row(none) == (None,) * 6
        with pytest.raises(KeyError):
            ECHO.values({"a": "missing the rest"})
        await conn.close()

    run(scenario)


def test_a_cancelled_request_closes_its_connection(database: Database):
    async def scenario() -> None:
        conn = await connect(database)
        task = asyncio.create_task(pipeline.run(conn, [(SLEEP_CANCELLED, {"s": 30})], prepared=set(), reply_timeout=60))
        await _until_running(database, "cancelled_request")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Half a pipeline may still be on the wire: the connection is not handed out again.
        assert conn.closed

    run(scenario)


def test_a_connection_lost_mid_pipeline_raises_operational_error(database: Database):
    async def scenario() -> None:
        conn = await connect(database)
        pid = pipeline.first_row(await pipeline.run(conn, [(WHO, {})], prepared=None, reply_timeout=10))
        assert pid is not None and pid[0] is not None
        task = asyncio.create_task(pipeline.run(conn, [(SLEEP_LOST, {"s": 30})], prepared=None, reply_timeout=60))
        await _until_running(database, "lost_connection")
        await _terminate(database, int(pid[0]))
        with pytest.raises(psycopg.OperationalError):
            await task
        assert conn.closed or conn.broken

    run(scenario)


def test_no_reply_in_time_is_a_timeout_and_closes_the_connection(database: Database):
    async def scenario() -> None:
        conn = await connect(database)
        with pytest.raises(TimeoutError):
            await pipeline.run(conn, [(SLEEP_TIMED_OUT, {"s": 3})], prepared=None, reply_timeout=0.5)
        assert conn.closed

    run(scenario)


def test_a_request_cancelled_through_the_pool_stops_its_statement_on_the_server(database: Database):
    # SET_REQUEST_CONTEXT sets client_connection_check_interval: the backend notices the closed
    # connection within a second instead of running on until statement_timeout.
    settings = Settings(database_url=database.admin_dsn, jwt_secret=JWT_SECRET, db_pool_size=1,
                        db_statement_timeout_ms=60_000)

    async def scenario() -> None:
        db = ApiDatabase(settings)
        await db.pool.open(wait=True)
        try:
            task = asyncio.create_task(db.fetch_one(None, SLEEP_POOL_CANCELLED, {"s": 45}))
            await _until_running(database, "pool_cancelled_request")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(10):  # far below the 45 s the statement asked for
                await _until_gone(database, "pool_cancelled_request")
            assert await db.fetch_one(None, WHO, {}) is not None  # the pool lends a fresh connection
        finally:
            await db.pool.close()

    run(scenario)


def test_the_pool_turns_a_lost_connection_into_503_and_replaces_it(database: Database):
    settings = Settings(database_url=database.admin_dsn, jwt_secret=JWT_SECRET, db_pool_size=1, db_timeout_s=5)

    async def scenario() -> None:
        db = ApiDatabase(settings)
        await db.pool.open(wait=True)
        try:
            first = await db.fetch_one(None, WHO, {})
            assert first is not None and first[0] is not None
            task = asyncio.create_task(db.fetch_one(None, SLEEP_POOL_LOST, {"s": 30}))
            await _until_running(database, "pool_lost_connection")
            await _terminate(database, int(first[0]))
            with pytest.raises(ServiceUnavailable) as caught:
                await task
            assert caught.value.status == 503
            second = await db.fetch_one(None, WHO, {})  # a new connection, at once
            assert second is not None and second != first
        finally:
            await db.pool.close()

    run(scenario)


async def _activity(database: Database, needle: str) -> list[int]:
    async with await AsyncConnection.connect(database.admin_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND query LIKE %s"
            " AND pid <> pg_backend_pid()", [database.name, f"%{needle}%"])
        return [row[0] for row in await cur.fetchall()]


async def _until_running(database: Database, needle: str) -> None:
    async with asyncio.timeout(30):
        while not await _activity(database, needle):
            await asyncio.sleep(0.02)  # polling the server's view, with a deadline


async def _until_gone(database: Database, needle: str) -> None:
    async with asyncio.timeout(30):
        while await _activity(database, needle):
            await asyncio.sleep(0.02)  # polling the server's view, with a deadline


async def _terminate(database: Database, pid: int) -> None:
    async with await AsyncConnection.connect(database.admin_dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", [pid])

