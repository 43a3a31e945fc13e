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

import logging
import select
from collections.abc import Mapping
from typing import Any, LiteralString

import msgspec
import psycopg
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from .config import Settings
from .errors import ServiceUnavailable, from_database

log = logging.getLogger("taskapi.db")

Params = Mapping[str, Any]

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
            max_waiting=max(64, settings.db_pool_size * 32),
            check=_check_alive,
            reconnect_timeout=0,  # keep trying to reconnect forever while the database is away
            name="taskapi",
        )

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

    async def close(self) -> None:
        await self.pool.close()

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


class _PooledConnection:
    """`pool.connection()` that turns every driver or pool failure into an `ApiError`."""

    __slots__ = ("_cm", "_pool", "_timeout")

    def __init__(self, pool: AsyncConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._cm: Any = None

    async def __aenter__(self) -> AsyncConnection:
        self._cm = self._pool.connection(timeout=self._timeout)
        try:
            return await self._cm.__aenter__()
        except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
            raise from_database(exc) from exc

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._cm.__aexit__(exc_type, exc, tb)
        except psycopg.Error as pool_exc:  # returning the connection failed: the pool discards it
            log.debug("returning a connection failed: %s", type(pool_exc).__name__)
        if isinstance(exc, psycopg.Error):
            raise from_database(exc) from exc


async def _check_alive(conn: AsyncConnection) -> None:
    """Pool check on every checkout, without a round trip.

    An idle connection has nothing to read. If its socket is readable, the server has sent
    something: usually the goodbye of a shutdown or a terminated backend, then EOF. Reading it makes
    libpq notice the broken connection, and raising here makes the pool replace it, so no request is
    handed a connection that a check could have caught.
    """
    # poll, not select: select fails on descriptors above 1024, common with many client sockets.
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        conn.pgconn.consume_input()  # raises OperationalError when the server closed the socket
        if conn.broken or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("connection closed by the server")
