"""The connection pool, and the one place a request's identity reaches PostgreSQL.

Each request sends, in one network write, two statements and a Sync (api/pipeline.py): the
``set_config`` select that installs the caller's claims, then the handler's statement. Everything
before a Sync runs in one implicit transaction, so the claims are transaction-local
(``set_config(..., true)``), vanish when it commits, and never outlive the request on a pooled
connection, also behind PgBouncer in transaction mode. That is one round trip per request instead of
four (BEGIN, set_config, statement, COMMIT).

The statements are server-side prepared once per connection (``DB_POOLER=session``, the default), so
PostgreSQL parses and plans them once; behind a transaction-mode pooler (``DB_POOLER=transaction``)
they are sent unnamed and nothing outlives the transaction. Only the caller's `sub` is ever put in
the claims, so no other claim can reach a server log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from types import TracebackType
from typing import Any

import msgspec
import psycopg
from litestar import Request
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq.abc import PGresult
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from . import pipeline
from .admission import Admission, request_deadline
from .config import Settings
from .errors import ServiceUnavailable, from_database
from .pipeline import Params, Prepared, Row, Statement
from .roles import CHECK_RUNTIME_ROLE, RoleUnfit, role_problem

log = logging.getLogger("taskapi.db")

# How often a pool below its size tries to grow again; with the connect time it bounds how long the
# API keeps answering 503 once the database is back (issue #6: serving again within 2 s).
REFILL_INTERVAL_S = 0.5

# Installs the verified identity and the statement timeout for this transaction only, and pins its
# search_path: no function planted in a schema of a database- or role-level search_path runs in a
# request (issue #9). The connection check makes the server notice within a second that a connection
# was closed under a running statement (a cancelled request closes it: api/pipeline.py) instead of
# running it to statement_timeout.
SET_REQUEST_CONTEXT = Statement(
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),"
    " pg_catalog.set_config('request.jwt.claims', %(claims)s, true),"
    " pg_catalog.set_config('statement_timeout', %(statement_timeout)s, true),"
    " pg_catalog.set_config('client_connection_check_interval', '1000', true)")


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
        self._prepared: weakref.WeakKeyDictionary[AsyncConnection[Any], Prepared] = weakref.WeakKeyDictionary()
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if "connect_timeout" not in conninfo_to_dict(settings.database_url):
            # A database host that drops packets must not hold a connection attempt for minutes.
            kwargs["connect_timeout"] = max(2, math.ceil(settings.db_timeout_s))
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            kwargs=kwargs,
            open=False,
            timeout=settings.db_timeout_s,
            # The queue is bounded by `admission` (api/admission.py), or by DB_MAX_WAITING when set:
            # past it a request gets 503 at once.
            max_waiting=settings.db_max_waiting or 0,
            # psycopg_pool's backoff doubles from 1 s, so after a long outage its next attempt could
            # be minutes away. With 0, a failed attempt is retried once at once and then given up
            # (the pool shrinks by one); `_keep_full` grows it back every REFILL_INTERVAL_S.
            reconnect_timeout=0,
            name="taskapi",
        )
        # Requests admitted to wait for a connection: sized from the measured service rate, unless
        # DB_MAX_WAITING fixes the queue length (then the pool's max_waiting enforces it).
        self.admission = Admission(settings.db_pool_size, settings.db_timeout_s, fixed_limit=settings.db_max_waiting)
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

    async def fetch_one(self, user_id: str | None, statement: Statement, params: Params) -> Row | None:
        """Run `statement` as `user_id` in one transaction; return its first row (as sent), or None.

        `user_id` None runs it with no identity: the policies then admit no row. Raises `ApiError`
        (a 503 when the database is unreachable, busy or slow; see errors.from_database).
        """
        return pipeline.first_row(await self._run(user_id, statement, params))

    async def fetch_all(self, user_id: str | None, statement: Statement, params: Params, *,
                        statement_timeout_ms: int | None = None) -> list[Row]:
        """Like `fetch_one`, but every row; `statement_timeout_ms` replaces DB_STATEMENT_TIMEOUT_MS for it."""
        return pipeline.all_rows(await self._run(user_id, statement, params, statement_timeout_ms))

    async def _run(self, user_id: str | None, statement: Statement, params: Params,
                   statement_timeout_ms: int | None = None) -> PGresult:
        # Only the sub: the policies need nothing else, and nothing else may reach a server log.
        context = {"claims": msgspec.json.encode({"sub": user_id}).decode() if user_id else "",
                   "statement_timeout": self._statement_timeout if statement_timeout_ms is None
                   else str(statement_timeout_ms)}
        async with _PooledConnection(self.pool, self._timeout, self.admission) as conn:
            prepared = self._prepared.setdefault(conn, set()) if self._prepare else None
            return await pipeline.run(conn, [(SET_REQUEST_CONTEXT, context), (statement, params)],
                                      prepared=prepared, reply_timeout=self._reply_timeout)

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


def current_database(request: Request[Any, Any, Any]) -> Database:
    """The worker's `Database`, which `create_app` keeps in the app's state.

    A typed accessor rather than a Litestar dependency: resolving two dependencies per request
    measured about 60 µs, a fifth of a list request's server CPU.
    """
    db = request.app.state[STATE_KEY]
    if not isinstance(db, Database):
        raise RuntimeError("the app's state holds no Database")
    return db


# Where `create_app` keeps the worker's Database in the app's state.
STATE_KEY = "db"


class _PooledConnection:
    """A live connection from the pool, within DB_TIMEOUT_S; the one place a driver error becomes an `ApiError`.

    A request admitted by api/admission.py waits only until its deadline (DB_TIMEOUT_S from its
    arrival), and the time it holds the connection is the service time admission sizes the queue by.

    The liveness check runs here rather than as the pool's `check`: psycopg_pool sleeps one second
    (then two, four...) after each connection that fails its check, so after a restart of
    PostgreSQL a request meeting a few dead idle connections would run out of DB_TIMEOUT_S. Here a
    dead connection is handed back (the pool discards it and opens a replacement) and the next one
    is taken at once.
    """

    __slots__ = ("_admission", "_conn", "_pool", "_taken", "_timeout")

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], timeout: float,
                 admission: Admission) -> None:
        self._pool = pool
        self._timeout = timeout
        self._admission = admission
        self._conn: AsyncConnection[Any] | None = None
        self._taken: float | None = None

    async def __aenter__(self) -> AsyncConnection[Any]:
        admitted_until = request_deadline.get()
        deadline = time.monotonic() + self._timeout if admitted_until is None else admitted_until
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable("the database is busy, retry shortly")
            try:
                conn = await self._pool.getconn(timeout=left)
            except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
                raise from_database(exc) from exc
            if pipeline.is_idle_and_sound(conn):
                self._conn = conn
                if admitted_until is not None:  # only requests the gate admitted measure the service time
                    self._taken = self._admission.holding(time.monotonic())
                return conn
            await conn.close()
            await self._pool.putconn(conn)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._conn is not None
        if self._taken is not None:
            self._admission.released(self._taken, time.monotonic())
        try:
            await self._pool.putconn(self._conn)
        except psycopg.Error as pool_exc:  # returning the connection failed: the pool discards it
            log.debug("returning a connection failed: %s", type(pool_exc).__name__)
        if isinstance(exc, psycopg.Error | TimeoutError):
            raise from_database(exc) from exc
