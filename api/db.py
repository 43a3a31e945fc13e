"""The connection pool, and the one place a request's identity reaches PostgreSQL.

Each request sends, in one network write, two statements and a Sync (libpq pipeline mode): the
``set_config`` select that installs the caller's claims, then the handler's statement. Everything
before a Sync runs in one implicit transaction, so the claims are transaction-local
(``set_config(..., true)``), vanish when it commits, and never outlive the request on a pooled
connection, also behind PgBouncer in transaction mode. That is one round trip per request instead of
four (BEGIN, set_config, statement, COMMIT).

The statements are server-side prepared once per connection (``DB_POOLER=session``, the default), so
PostgreSQL parses and plans them once; behind a transaction-mode pooler (``DB_POOLER=transaction``)
they are sent unnamed and nothing outlives the transaction. Parameters always travel separately from
the SQL text, and only the caller's `sub` is ever put in the claims, so no other claim can reach a
server log line. Results come back as the bytes PostgreSQL sent (the handlers' statements return the
response JSON itself), without psycopg's cursor layer: measured on the list endpoint, this path costs
about a third of the client CPU of a cursor execute and halves the database's time per request
(README, "Performance").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import select
import time
import weakref
from collections.abc import Mapping
from typing import Any, LiteralString

import msgspec
import psycopg
from psycopg import AsyncConnection, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import error_from_result
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from .config import Settings
from .errors import ServiceUnavailable, from_database
from .roles import CHECK_RUNTIME_ROLE, RoleUnfit, role_problem

log = logging.getLogger("taskapi.db")

Params = Mapping[str, Any]

# How often a pool below its size tries to grow again; with the connect time it bounds how long the
# API keeps answering 503 once the database is back (issue #6: serving again within 2 s).
REFILL_INTERVAL_S = 0.5



class Statement:
    """A SQL statement with named ``%(name)s`` parameters, kept as written and ready to send.

    The text sent to PostgreSQL has them as ``$1, $2...``; `name` identifies its server-side prepared
    form, the same on every connection.
    """

    __slots__ = ("name", "param_names", "sql", "text")

    def __init__(self, sql: LiteralString) -> None:
        self.sql = sql
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.text = re.sub(r"%\((\w+)\)s", number, sql).encode()
        self.param_names = tuple(names)
        self.name = b"taskapi_" + hashlib.sha256(self.text).hexdigest()[:16].encode()

    def values(self, params: Params) -> list[bytes | None]:
        """The parameters in `$n` order, as PostgreSQL's text format."""
        return [_text(params[name]) for name in self.param_names]


# Installs the verified identity and the statement timeout for this transaction only, and pins its
# search_path: no function planted in a schema of a database-level search_path runs in a request (issue #9).
SET_REQUEST_CONTEXT = Statement(
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),"
    " pg_catalog.set_config('request.jwt.claims', %(claims)s, true),"
    " pg_catalog.set_config('statement_timeout', %(statement_timeout)s, true)")

# The one deliberate look past RLS (see sql/migrations/0001_tasks.sql): 403 versus 404.
TASK_EXISTS = Statement("SELECT taskapi.task_exists(%(id)s)")

# /ready: reachable and migrated (up to the audit schema, which the posture guard needs).
CHECK_READY = Statement(
    "SELECT pg_catalog.to_regclass('taskapi.tasks') IS NOT NULL"
    " AND pg_catalog.to_regprocedure('taskapi_audit.findings()') IS NOT NULL")

# The posture guard (api/posture.py): every problem the database reports about its own isolation
# (sql/migrations/0002_audit.sql), under the statement timeout like any request.
LIST_FINDINGS = Statement('SELECT "check", severity, object FROM taskapi_audit.findings()')

Row = tuple[bytes | None, ...]


class Database:
    """The pool plus the request-scoped way to use it. One per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.db_timeout_s
        self._statement_timeout = str(settings.db_statement_timeout_ms)
        # A reply that has not come this long after statement_timeout would have cut the statement
        # means a server or network that hangs without closing the connection.
        self._reply_timeout = settings.db_statement_timeout_ms / 1000 + settings.db_timeout_s
        # A transaction-mode pooler may give each transaction a different server connection:
        # nothing session-scoped, so no server-side prepared statements.
        self._prepare = settings.db_pooler != "transaction"
        # Which statements each pooled connection has prepared; forgotten with the connection.
        self._prepared: weakref.WeakKeyDictionary[AsyncConnection, set[bytes]] = weakref.WeakKeyDictionary()
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if "connect_timeout" not in conninfo_to_dict(settings.database_url):
            # A database host that drops packets must not hold a connection attempt for minutes.
            kwargs["connect_timeout"] = max(2, math.ceil(settings.db_timeout_s))
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            kwargs=kwargs,
            open=False,
            timeout=settings.db_timeout_s,
            # Bound the queue of requests waiting for a connection: past it they get 503 at once.
            max_waiting=settings.db_max_waiting,
            # psycopg_pool's backoff doubles from 1 s, so after a long outage its next attempt could
            # be minutes away. With 0, a failed attempt is retried once at once and then given up
            # (the pool shrinks by one); `_keep_full` grows it back every REFILL_INTERVAL_S.
            reconnect_timeout=0,
            name="taskapi",
        )
        self._keeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the pool and refuse (`RoleUnfit`) a role that could bypass row-level security."""
        await self.pool.open(wait=True, timeout=self._timeout)
        async with self.pool.connection() as conn:
            cur = await conn.execute(CHECK_RUNTIME_ROLE)
            problem = role_problem(await cur.fetchall(), conn.info.user)
        if problem:
            await self.pool.close()
            raise RoleUnfit(problem)
        self._keeper = asyncio.create_task(self._keep_full(), name="taskapi-pool-keeper")

    async def close(self) -> None:
        """Stop refilling, close every connection; requests still waiting get a 503."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self.pool.close()
        log.info("database pool closed")

    async def fetch_one(self, user_id: str, statement: Statement, params: Params) -> Row | None:
        """Run `statement` as `user_id` in one transaction; return its first row (as sent), or None."""
        async with self._connection() as conn:
            result = await self._run(conn, self._context(user_id), statement, params)
        return _first_row(result)

    async def task_exists(self, task_id: Any) -> bool:
        """Whether a task with this id exists at all (no claims needed, no row data returned)."""
        async with self._connection() as conn:
            result = await self._run(conn, self._context(""), TASK_EXISTS, {"id": task_id})
        return _first_row(result) == (b"t",)

    async def findings(self, *, timeout_ms: int | None = None) -> list[tuple[str, str, str]]:
        """`(check, severity, object)` of every finding of ``taskapi_audit.findings()``; none when sound.

        `timeout_ms` replaces DB_STATEMENT_TIMEOUT_MS for this statement. Raises `ApiError`
        (`ServiceUnavailable` mostly) when the function cannot run.
        """
        context = self._context("")
        if timeout_ms is not None:
            context["statement_timeout"] = str(timeout_ms)
        async with self._connection() as conn:
            result = await self._run(conn, context, LIST_FINDINGS, {})
        return [tuple(result.get_value(row, col).decode() for col in range(3))  # type: ignore[misc, union-attr]
                for row in range(result.ntuples)]

    async def ready(self) -> bool:
        """Reachable and migrated, within DB_TIMEOUT_S."""
        try:
            async with self._connection() as conn:
                result = await self._run(conn, self._context(""), CHECK_READY, {})
        except ServiceUnavailable:
            return False
        return _first_row(result) == (b"t",)

    def _connection(self) -> _PooledConnection:
        return _PooledConnection(self.pool, self._timeout)

    def _context(self, user_id: str) -> dict[str, str]:
        # Only the sub: the policies need nothing else, and nothing else may reach a server log.
        return {"claims": msgspec.json.encode({"sub": user_id}).decode() if user_id else "",
                "statement_timeout": self._statement_timeout}

    async def _run(self, conn: AsyncConnection, context: Params, statement: Statement, params: Params) -> pq.PGresult:
        """Send SET_REQUEST_CONTEXT and `statement` with one Sync; return the statement's result.

        Raises the `psycopg.Error` of the first error PostgreSQL reported (the transaction is rolled
        back; `_PooledConnection` turns it into the client's `ApiError`). A connection left in an
        unknown state (cancelled, timed out, broken) is closed, so the pool replaces it instead of
        lending it out again.
        """
        pgconn = conn.pgconn
        prepared = self._prepared.setdefault(conn, set()) if self._prepare else None
        commands = [(SET_REQUEST_CONTEXT, context), (statement, params)]
        sent: list[tuple[bytes | None, Statement | None]] = []  # (prepared name, None) or (None, executed)
        clean = False
        pgconn.enter_pipeline_mode()
        try:
            for stmt, values in commands:
                if prepared is None:
                    pgconn.send_query_params(stmt.text, stmt.values(values))
                else:
                    if stmt.name not in prepared:
                        pgconn.send_prepare(stmt.name, stmt.text)
                        sent.append((stmt.name, None))
                    pgconn.send_query_prepared(stmt.name, stmt.values(values))
                sent.append((None, stmt))
            pgconn.pipeline_sync()
            async with asyncio.timeout(self._reply_timeout):
                results = await _exchange(pgconn)
            clean = True
        except TimeoutError:
            raise ServiceUnavailable("the database did not answer in time, retry shortly") from None
        finally:
            if clean:
                pgconn.exit_pipeline_mode()
            else:
                pgconn.finish()
        error = None
        for (prepared_name, _), result in zip(sent, results, strict=True):
            if prepared_name is not None and result.status == pq.ExecStatus.COMMAND_OK:
                prepared.add(prepared_name)  # type: ignore[union-attr]  # not transactional: it stays
            elif error is None and result.status not in _SUCCESS:
                error = result
        if error is not None:
            raise error_from_result(error, encoding=conn.info.encoding)
        return results[-1]

    async def _keep_full(self) -> None:
        """Grow the pool back to its size whenever connections were lost and not replaced.

        psycopg_pool only grows a pool on its own while clients are queueing for a connection;
        without this, a pool emptied by an outage would refill only under load, and one that lost
        a connection in a short hiccup would stay a connection short until the next queue.
        `check()` verifies the idle connections and starts growing by one connection at a time.
        """
        while True:
            await asyncio.sleep(REFILL_INTERVAL_S)
            stats = self.pool.get_stats()
            if stats["pool_size"] < stats["pool_min"]:
                try:
                    await self.pool.check()
                except Exception:  # never let the keeper die: it is what brings the pool back
                    log.exception("pool check failed")


_SUCCESS = frozenset({pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK})


async def _exchange(pgconn: pq.abc.PGconn) -> list[pq.PGresult]:
    """Flush a pipeline ended by a Sync and read one result per command, up to the Sync.

    Raises `psycopg.OperationalError` when the connection breaks.
    """
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush():
        await _ready(loop, fd, write=True)
    results: list[pq.PGresult] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one command's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)
        await _ready(loop, fd)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool = False) -> None:
    """Wait until `fd` is readable (or writable)."""
    future = loop.create_future()

    def wake() -> None:
        if not future.done():  # the callback may fire again before this task resumes
            future.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _first_row(result: pq.PGresult) -> Row | None:
    if result.ntuples == 0:
        return None
    return tuple(result.get_value(0, col) for col in range(result.nfields))


def _text(value: Any) -> bytes | None:
    """A Python value in PostgreSQL's text format (the server casts it to the parameter's type)."""
    if value is None:
        return None
    if value is True:
        return b"t"
    if value is False:
        return b"f"
    return str(value).encode()


class _PooledConnection:
    """A live connection from the pool, within DB_TIMEOUT_S; every failure becomes an `ApiError`.

    The liveness check runs here rather than as the pool's `check`: psycopg_pool sleeps one second
    (then two, four...) after each connection that fails its check, so after a restart of
    PostgreSQL a request meeting a few dead idle connections would run out of DB_TIMEOUT_S. Here a
    dead connection is handed back (the pool discards it and opens a replacement) and the next one
    is taken at once.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                conn = await self._pool.getconn(timeout=deadline - time.monotonic())
            except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
                raise from_database(exc) from exc
            if _is_alive(conn):
                self._conn = conn
                return conn
            await conn.close()
            await self._pool.putconn(conn)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._conn is not None
        try:
            await self._pool.putconn(self._conn)
        except psycopg.Error as pool_exc:  # returning the connection failed: the pool discards it
            log.debug("returning a connection failed: %s", type(pool_exc).__name__)
        if isinstance(exc, psycopg.Error):  # the one place a driver error becomes the client's ApiError
            raise from_database(exc) from exc


def _is_alive(conn: AsyncConnection) -> bool:
    """Whether an idle pooled connection may be used, without a round trip.

    An idle connection has nothing to read. If its socket is readable, the server has sent
    something: almost always the goodbye of a shutdown or a terminated backend, then EOF (rarely a
    notice). Either way the connection is not trusted with a request and gets replaced.
    """
    if conn.closed or conn.broken:
        return False
    # poll, not select: select fails on descriptors above 1024, common with many client sockets.
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return not poller.poll(0)
