"""The connection pool, and the one place a request's identity reaches PostgreSQL.

Each request's SQL runs as a single simple-query message: the ``set_config`` select that installs
the caller's claims, then the statement. PostgreSQL runs the statements of one such message in one
implicit transaction, so the claims are transaction-local (``set_config(..., true)``), vanish at its
end, and never outlive the request on a pooled connection, also behind PgBouncer in transaction
mode. One message means one network round trip per request instead of four (BEGIN, set_config,
statement, COMMIT). Parameters are bound client-side by psycopg (escaped literals); only the `sub`
is ever bound into the claims, so no other claim can reach a server log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import time
from collections.abc import Mapping
from typing import Any, LiteralString

import msgspec
import psycopg
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from .config import Settings
from .errors import ServiceUnavailable, from_database

log = logging.getLogger("taskapi.db")

Params = Mapping[str, Any]

# How often a pool below its size tries to grow again; with the connect time it bounds how long the
# API keeps answering 503 once the database is back (issue #6: serving again within 2 s).
REFILL_INTERVAL_S = 0.5

# Installs the verified identity and the statement timeout for this transaction only.
SET_REQUEST_CONTEXT: LiteralString = (
    "SELECT set_config('request.jwt.claims', %(_claims)s, true),"
    " set_config('statement_timeout', %(_statement_timeout)s, true);\n"
)

# The one deliberate look past RLS (see sql/migrations/0001_tasks.sql): 403 versus 404.
TASK_EXISTS: LiteralString = "SELECT taskapi.task_exists(%(id)s)"

# Is this role fit to serve? (CONTRACT.md section 6: the API refuses a role that could bypass RLS.)
CHECK_RUNTIME_ROLE: LiteralString = """
    SELECT r.rolsuper,
           r.rolbypassrls,
           to_regclass('taskapi.tasks') IS NOT NULL AS migrated,
           coalesce((SELECT c.relowner = r.oid FROM pg_class c
                     WHERE c.oid = to_regclass('taskapi.tasks')), false) AS owns_tasks,
           EXISTS (SELECT 1 FROM pg_roles o WHERE o.rolname = 'taskapi_owner'
                   AND pg_has_role(r.oid, o.oid, 'MEMBER')) AS owner_member
    FROM pg_roles r
    WHERE r.rolname = current_user
"""

# /ready: reachable and migrated (up to the audit schema, which the posture guard needs).
CHECK_READY: LiteralString = (
    "SELECT to_regclass('taskapi.tasks') IS NOT NULL"
    " AND to_regprocedure('taskapi_audit.findings()') IS NOT NULL"
)

# The posture guard (api/posture.py): every problem the database reports about its own isolation
# (sql/migrations/0002_audit.sql), under the statement timeout like any request.
LIST_FINDINGS: LiteralString = (
    "SELECT set_config('statement_timeout', %(_statement_timeout)s, true);\n"
    'SELECT "check", severity, object FROM taskapi_audit.findings()'
)


class RoleUnfit(Exception):
    """The runtime role could bypass row-level security; ``str(exc)`` is a one-line reason."""


def role_problem(row: tuple[bool, bool, bool, bool, bool] | None, role: str) -> str | None:
    """The reason this role must not serve, from a `CHECK_RUNTIME_ROLE` row, or None when fit."""
    if row is None:
        return f"cannot read the attributes of role {role}"
    superuser, bypassrls, migrated, owns_tasks, owner_member = row
    if superuser:
        return f"refusing to start: database role {role} is a superuser, which bypasses row-level security"
    if bypassrls:
        return f"refusing to start: database role {role} has BYPASSRLS"
    if not migrated:
        return "refusing to start: table taskapi.tasks does not exist; run `taskapi migrate` first"
    if owns_tasks:
        return f"refusing to start: database role {role} owns taskapi.tasks and could disable its policies"
    if owner_member:
        return f"refusing to start: database role {role} is a member of taskapi_owner"
    return None


class Database:
    """The pool plus the request-scoped way to use it. One per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.db_timeout_s
        self._statement_timeout = str(settings.db_statement_timeout_ms)
        kwargs: dict[str, Any] = {"autocommit": True, "cursor_factory": AsyncClientCursor}
        if "connect_timeout" not in conninfo_to_dict(settings.database_url):
            # A database host that drops packets must not hold a connection attempt for minutes.
            kwargs["connect_timeout"] = max(2, math.ceil(settings.db_timeout_s))
        if settings.db_pooler == "transaction":
            # A transaction-mode pooler may give each statement a different server connection:
            # nothing session-scoped, no server-side prepared statements.
            kwargs["prepare_threshold"] = None
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
            row = await cur.fetchone()
            problem = role_problem(row, conn.info.user)
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

    async def fetch_one(self, user_id: str, statement: LiteralString, params: Params) -> tuple[Any, ...] | None:
        """Run `statement` as `user_id` in one transaction; return its first row, or None."""
        async with self._connection() as conn:
            cur = conn.cursor()
            await cur.execute(SET_REQUEST_CONTEXT + statement, self._with_context(user_id, params))
            cur.nextset()
            return await cur.fetchone()

    async def task_exists(self, task_id: Any) -> bool:
        """Whether a task with this id exists at all (no claims needed, no row data returned)."""
        async with self._connection() as conn:
            cur = await conn.execute(TASK_EXISTS, {"id": task_id})
            row = await cur.fetchone()
            return bool(row and row[0])

    async def findings(self) -> list[tuple[str, str, str]]:
        """`(check, severity, object)` of every finding of ``taskapi_audit.findings()``; none when sound.

        Raises `ApiError` (`ServiceUnavailable` mostly) when the function cannot run.
        """
        async with self._connection() as conn:
            cur = conn.cursor()
            await cur.execute(LIST_FINDINGS, {"_statement_timeout": self._statement_timeout})
            cur.nextset()
            return await cur.fetchall()

    async def ready(self) -> bool:
        """Reachable and migrated, within DB_TIMEOUT_S."""
        try:
            async with self._connection() as conn:
                cur = await conn.execute(CHECK_READY)
                row = await cur.fetchone()
                return bool(row and row[0])
        except ServiceUnavailable:
            return False

    def _connection(self) -> _PooledConnection:
        return _PooledConnection(self.pool, self._timeout)

    def _with_context(self, user_id: str, params: Params) -> dict[str, Any]:
        return {
            **params,
            "_claims": msgspec.json.encode({"sub": user_id}).decode(),
            "_statement_timeout": self._statement_timeout,
        }

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
        if isinstance(exc, psycopg.Error):
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
