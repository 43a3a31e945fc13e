"""`taskapi serve`: check the configuration and the database role, then run granian."""

from __future__ import annotations

import logging
import os
import resource

import psycopg

from . import metrics
from .admission import CEILING_PER_CONNECTION
from .config import Settings
from .errors import first_line
from .logs import RequestLog, configure_logging
from .roles import CHECK_RUNTIME_ROLE, role_problem

log = logging.getLogger("taskapi.server")

# hyper's read buffer, which bounds the request head it accepts (431 and close beyond it). Above
# api/limits.py's MAX_HEAD_BYTES, so a head between the two still gets the contract's JSON 431.
MAX_BUFFER_BYTES = 256 * 1024
# Requests admitted into Python beyond those that can hold or wait for a connection: room for
# /health, /ready and the requests refused before any database work (401, 404, 4xx of limits.py).
BACKPRESSURE_HEADROOM = 64
LISTEN_BACKLOG = 4096
# granian's allocator (jemalloc, in its Rust library) keeps freed pages for 10 s by default and, with no
# background thread, purges them only while it allocates: after a burst a worker held ~20 MiB of pages it
# no longer used. Returning them at once measured no CPU difference per request (docs/operations.md,
# "Memory"). jemalloc reads this once, when granian's library is loaded: before `import granian`.
# An operator's own _RJEM_MALLOC_CONF wins.
ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
ALLOCATOR_OPTIONS = "dirty_decay_ms:0,muzzy_decay_ms:0"


class StartupError(Exception):
    """The server must not start; ``str(exc)`` is the one line to print."""


def preflight(settings: Settings) -> None:
    """Refuse to start when the database is unreachable or the role could get past RLS (api/roles.py)."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=max(1, round(settings.db_timeout_s)),
                             autocommit=True) as conn:
            problem = role_problem(conn.execute(CHECK_RUNTIME_ROLE).fetchall(), conn.info.user)
    except psycopg.Error as exc:
        raise StartupError(f"cannot use DATABASE_URL: {first_line(exc)}") from None
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
    admission (api/admission.py): a request that needs the database holds a connection or waits, at
    most DB_TIMEOUT_S, in a queue sized from the measured service rate (or DB_MAX_WAITING), and gets
    a 503 at once beyond it. It is never below what that queue can hold, plus headroom so /health
    and /ready answer while the pool is saturated.
    """
    queue = settings.db_max_waiting or CEILING_PER_CONNECTION * settings.db_pool_size
    return max(settings.max_connections, settings.db_pool_size + queue + BACKPRESSURE_HEADROOM)


def raise_file_limit(settings: Settings) -> None:
    """Raise the open-file limit to its hard limit: each worker may hold MAX_CONNECTIONS sockets.

    Many systems start services with a soft limit of 1,024, which 10,000 keep-alive clients exceed
    (accept fails, the client waits in the backlog). A hard limit too low for that is logged.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < settings.max_connections + 64:
        log.warning("open-file limit %d is below MAX_CONNECTIONS=%d: raise it (ulimit -n, LimitNOFILE)",
                    hard, settings.max_connections)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM.

    On SIGTERM granian stops accepting, lets the requests in flight finish, then runs the app's
    lifespan shutdown (which closes the pool) and exits 0; a worker still busy after
    `SHUTDOWN_GRACE_S` is killed.
    """
    raise_file_limit(settings)
    os.environ.setdefault(ALLOCATOR_ENV, ALLOCATOR_OPTIONS)
    folder = stop_metrics = None
    if settings.metrics_port is not None:
        folder = metrics.prepare_folder()  # before the workers start: they inherit where to write
        try:
            stop_metrics = metrics.serve(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            metrics.remove_folder(folder)
            raise StartupError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                               f"{exc.strerror or exc}") from None
    try:
        _serve(settings)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if folder is not None:
            metrics.remove_folder(folder)


def _serve(settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

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
        # HTTP/1.1 only: granian's automatic HTTP/2 detection kept about 9 KiB more per keep-alive
        # connection (5,000 per worker: 108 against 155 MiB); taskapi terminates no TLS, so HTTP/2
        # could only come as cleartext prior knowledge, which no browser or balancer sends by default.
        http=HTTPModes.http1,
        websockets=False,
        log_enabled=True,
        log_level=LogLevels(settings.log_level.lower()),
        workers_kill_timeout=max(1, round(settings.shutdown_grace_s)),
        # uvloop: measured 24 % less server CPU per list request than asyncio's loop (README, Performance).
        loop=Loops.uvloop,
    ).serve()
