"""`taskapi serve`: check the configuration and the database role, then run granian."""

from __future__ import annotations

import psycopg
from granian.constants import Interfaces, Loops
from granian.http import HTTP1Settings
from granian.server import Server

from .config import Settings
from .logs import RequestLog, configure_logging
from .roles import CHECK_RUNTIME_ROLE, role_problem

# hyper's read buffer, which bounds the request head it accepts (431 and close beyond it). Above
# api/limits.py's MAX_HEAD_BYTES, so a head between the two still gets the contract's JSON 431.
MAX_BUFFER_BYTES = 256 * 1024
# Requests admitted into Python beyond those that can hold or wait for a connection: room for
# /health, /ready and the requests refused before any database work (401, 404, 4xx of limits.py).
BACKPRESSURE_HEADROOM = 64
LISTEN_BACKLOG = 4096


class StartupError(Exception):
    """The server must not start; ``str(exc)`` is the one line to print."""


def preflight(settings: Settings) -> None:
    """Refuse to start when the database is unreachable or the role could get past RLS (api/roles.py)."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=max(1, round(settings.db_timeout_s)),
                             autocommit=True) as conn:
            problem = role_problem(conn.execute(CHECK_RUNTIME_ROLE).fetchall(), conn.info.user)
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"cannot use DATABASE_URL: {first_line}") from None
    if problem:
        raise StartupError(problem)


def app_from_env() -> RequestLog:
    """Granian's factory: each worker process reads the environment and builds its own app."""
    from .app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def backpressure(settings: Settings) -> int:
    """How many connections one worker accepts at once (granian's `backpressure` counts connections).

    Idle keep-alive connections cost granian little, so this is high (MAX_CONNECTIONS, default 8192
    per worker): 10,000 clients may hold a connection open. What bounds the work, and the memory, is
    the pool's queue: a request that needs the database holds a connection or waits in a queue of
    at most DB_MAX_WAITING for DB_TIMEOUT_S, and gets a 503 at once beyond it. It is never below
    what that queue needs, plus headroom so /health and /ready answer while the pool is saturated.
    """
    return max(settings.max_connections, settings.db_pool_size + settings.db_max_waiting + BACKPRESSURE_HEADROOM)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM.

    On SIGTERM granian stops accepting, lets the requests in flight finish, then runs the app's
    lifespan shutdown (which closes the pool) and exits 0; a worker still busy after
    `SHUTDOWN_GRACE_S` is killed.
    """
    Server(
        "api.server:app_from_env",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        backpressure=backpressure(settings),
        # Connections not yet accepted wait in the kernel's listen queue: sized for bursts of new
        # clients (Linux caps it at net.core.somaxconn, 4096 by default).
        backlog=LISTEN_BACKLOG,
        # A client has this long to send its request head; RequestLimits gives the body as long again.
        # granian's header timeout runs from the end of the previous response (or the accept) to the end
        # of the next request head: it bounds both a slow head and an idle keep-alive connection.
        http1_settings=HTTP1Settings(header_read_timeout=round(settings.http_keepalive_s * 1000),
                                     max_buffer_size=MAX_BUFFER_BYTES),
        websockets=False,
        log_enabled=True,
        log_level=settings.log_level.lower(),
        workers_kill_timeout=max(1, round(settings.shutdown_grace_s)),
        # uvloop: measured 24 % less server CPU per list request than asyncio's loop (README, Performance).
        loop=Loops.uvloop,
    ).serve()
