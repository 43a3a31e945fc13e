"""`taskapi serve`: check the configuration and the database role, then run granian."""

from __future__ import annotations

import psycopg
from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.server import Server

from .config import Settings
from .db import CHECK_RUNTIME_ROLE, role_problem
from .logs import RequestLog, configure_logging

# Slow-client protection: a client has this long to send its request headers.
HEADER_READ_TIMEOUT_MS = 5_000


class StartupError(Exception):
    """The server must not start; ``str(exc)`` is the one line to print."""


def preflight(settings: Settings) -> None:
    """Refuse to start when the database is unreachable or the role could bypass RLS."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=max(1, round(settings.db_timeout_s)),
                             autocommit=True) as conn:
            row = conn.execute(CHECK_RUNTIME_ROLE).fetchone()
            problem = role_problem(row, conn.info.user)
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


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. In-flight requests get `SHUTDOWN_GRACE_S` to finish."""
    Server(
        "api.server:app_from_env",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        websockets=False,
        log_enabled=True,
        log_level=settings.log_level.lower(),
        workers_kill_timeout=max(1, round(settings.shutdown_grace_s)),
    ).serve()
