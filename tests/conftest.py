"""One PostgreSQL and one migrated database per test session, and one real `taskapi serve` process.

PostgreSQL is the embedded one (started here, in a temporary folder) unless TEST_DATABASE_URL names
a superuser DSN of an existing server. Tests create their own users with unique ids, so row-level
security itself keeps them apart. A database that cannot be reached fails the run; nothing skips.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.auth import mint_token
from api.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + secrets.token_hex(16)
APP_PASSWORD = "app-" + secrets.token_hex(8)
AUDITOR_PASSWORD = "auditor-" + secrets.token_hex(8)
CORS_ORIGIN = "http://localhost:3000"
SERVER_START_TIMEOUT_S = 30


@dataclass
class Cluster:
    """A PostgreSQL server the tests may create databases on, through a superuser DSN."""

    admin_dsn: str
    embedded: object | None = None

    def dsn(self, *, dbname: str, user: str | None = None, password: str | None = None) -> str:
        parts = conninfo_to_dict(self.admin_dsn)
        parts["dbname"] = dbname
        if user is not None:
            parts["user"] = user
            parts.pop("password", None)
            if password is not None:
                parts["password"] = password
        return make_conninfo(**parts)

    def create_database(self, name: str, *, template: str | None = None) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Database:
    """A migrated database and the DSNs of its three roles."""

    name: str
    admin_dsn: str
    app_dsn: str
    auditor_dsn: str


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0], (
                "TEST_DATABASE_URL must be a superuser DSN")
        yield Cluster(admin_dsn=url)
        return
    from api import embedded

    # Not under pytest's basetemp: a concurrent pytest session prunes old basetemps, which would delete
    # the data directory of a server still in use.
    folder = Path(tempfile.mkdtemp(prefix="taskapi-test-pg-"))
    server = embedded.start(folder / "pgdata")
    try:
        yield Cluster(admin_dsn=server.dsn(), embedded=server)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def new_database(cluster: Cluster, prefix: str = "taskapi_test") -> Database:
    """A fresh database with taskapi migrated into it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    admin = cluster.dsn(dbname=name)
    migrate(admin, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    return Database(
        name=name,
        admin_dsn=admin,
        app_dsn=cluster.dsn(dbname=name, user="taskapi_app", password=APP_PASSWORD),
        auditor_dsn=cluster.dsn(dbname=name, user="taskapi_auditor", password=AUDITOR_PASSWORD),
    )


@pytest.fixture(scope="session")
def database(cluster: Cluster) -> Iterator[Database]:
    db = new_database(cluster)
    yield db
    cluster.drop_database(db.name)


@pytest.fixture
def scratch_database(cluster: Cluster) -> Iterator[Database]:
    """A database of its own, for tests that break the schema or the policies on purpose."""
    db = new_database(cluster, prefix="taskapi_scratch")
    yield db
    cluster.drop_database(db.name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A `taskapi serve` process; `base_url` answers once `start` returned."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env, cwd=ROOT,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"taskapi serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness, not synchronising the test itself
        self.stop()
        raise RuntimeError(f"taskapi serve did not answer within {SERVER_START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def server_env(database: Database, **extra: str) -> dict[str, str]:
    """The environment of a test server: only what the tests choose, nothing inherited that matters."""
    return {
        "DATABASE_URL": database.app_dsn,
        "JWT_SECRET": JWT_SECRET,
        "CORS_ORIGINS": CORS_ORIGIN,
        "LOG_LEVEL": "INFO",
        "WORKERS": "1",
        "DB_POOL_SIZE": "4",
        **extra,
    }


@pytest.fixture(scope="session")
def server(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The posture guard checks at start only: the roles are cluster-wide, and a periodic check that
    # met another test's deliberate break of a role would close this shared server for a minute.
    # tests/test_audit.py starts servers of its own to test the guard.
    env = server_env(database, POSTURE_CHECK_S="86400")
    srv = Server(env=env, log_path=tmp_path_factory.mktemp("server") / "serve.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


@dataclass
class User:
    """A test user with a unique id and a valid token."""

    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_user(prefix: str = "user") -> User:
    user_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return User(user_id, mint_token(JWT_SECRET, user_id))


@pytest.fixture
def alice() -> User:
    return make_user("alice")


@pytest.fixture
def bob() -> User:
    return make_user("bob")
