"""The server refuses to start, with one line, on bad configuration or a role that could bypass RLS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import jwt
import psycopg
import pytest
from psycopg import sql

from conftest import JWT_SECRET, ROOT, cluster_change, embedded_data_dir, free_port, server_env


def serve(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "JWT_", "BETTER_AUTH_", "TEST_DATABASE"))}
    return subprocess.run([sys.executable, "-m", "api.cli", "serve"], env={**base, "PORT": str(free_port()), **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_database_url_is_one_line():
    assert_refused(serve({"JWT_SECRET": JWT_SECRET}), "DATABASE_URL")


def test_missing_secret_is_one_line(database):
    assert_refused(serve({"DATABASE_URL": database.app_dsn}), "JWT_SECRET")


@pytest.mark.parametrize("name, value", [("PORT", "eighty"), ("DB_POOL_SIZE", "0"), ("DB_POOLER", "statement"),
                                         ("JWT_LEEWAY_S", "-1"), ("CORS_ORIGINS", "localhost:3000")])
def test_malformed_settings_are_one_line(database, name, value):
    assert_refused(serve({**server_env(database), name: value}), name)


def test_unreachable_database_is_one_line():
    env = {"DATABASE_URL": f"postgresql://taskapi_app@127.0.0.1:{free_port()}/nope", "JWT_SECRET": JWT_SECRET}
    assert_refused(serve(env), "DATABASE_URL")


def test_superuser_role_is_refused(cluster, database):
    assert_refused(serve({**server_env(database), "DATABASE_URL": database.admin_dsn}), "superuser")


def test_bypassrls_role_is_refused(private_database):
    with cluster_change(private_database.admin_dsn, "ALTER ROLE taskapi_app BYPASSRLS",
                        "ALTER ROLE taskapi_app NOBYPASSRLS"):
        assert_refused(serve(server_env(private_database)), "BYPASSRLS")


def test_member_of_owner_role_is_refused(private_database):
    with cluster_change(private_database.admin_dsn, "GRANT taskapi_owner TO taskapi_app",
                        "REVOKE taskapi_owner FROM taskapi_app"):
        assert_refused(serve(server_env(private_database)), "taskapi_owner")


# The start-up check covers what findings() checks about the runtime role (issue #9): every attribute
# that reaches past the policies, and every role it can become, however indirectly.
@pytest.mark.parametrize("change, revert, needle", [
    ("ALTER ROLE taskapi_app CREATEROLE", "ALTER ROLE taskapi_app NOCREATEROLE", "CREATEROLE"),
    ("ALTER ROLE taskapi_app REPLICATION", "ALTER ROLE taskapi_app NOREPLICATION", "REPLICATION"),
    ("ALTER ROLE taskapi_app CREATEDB", "ALTER ROLE taskapi_app NOCREATEDB", "CREATEDB"),
    ("GRANT pg_read_server_files TO taskapi_app", "REVOKE pg_read_server_files FROM taskapi_app",
     "member of pg_read_server_files"),
    ("GRANT pg_read_all_data TO taskapi_app", "REVOKE pg_read_all_data FROM taskapi_app", "member of pg_read_all_data"),
    ("CREATE ROLE startup_middle NOINHERIT; GRANT taskapi_owner TO startup_middle; GRANT startup_middle TO taskapi_app",
     "DROP ROLE startup_middle", "member of"),
], ids=["createrole", "replication", "createdb", "read-server-files", "read-all-data", "indirect-noinherit"])
def test_every_way_past_the_policies_is_refused(private_database, change, revert, needle):
    with cluster_change(private_database.admin_dsn, change, revert):
        assert_refused(serve(server_env(private_database)), needle)


def test_a_weak_secret_is_refused_in_one_line(database):
    assert_refused(serve({**server_env(database), "JWT_SECRET": "too-short-a-secret"}), "JWT_SECRET", "32 bytes")
    env = {k: v for k, v in server_env(database).items() if k != "JWT_SECRET"}
    assert_refused(serve({**env, "BETTER_AUTH_SECRET": "x" * 31}), "BETTER_AUTH_SECRET", "31 bytes")


def test_token_command_refuses_a_weak_secret():
    env = {**os.environ, "JWT_SECRET": "short"}
    result = subprocess.run([sys.executable, "-m", "api.cli", "token", "--sub", "x"], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "32 bytes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_owner_of_the_table_is_refused(scratch_database):
    with psycopg.connect(scratch_database.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE taskapi.tasks OWNER TO taskapi_app")
    assert_refused(serve(server_env(scratch_database)), "owns taskapi.tasks")


def test_unmigrated_database_is_refused(cluster, database):
    import uuid

    name = f"taskapi_unmigrated_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    try:
        with psycopg.connect(cluster.dsn(dbname=name), autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO taskapi_app").format(sql.Identifier(name)))
        env = {**server_env(database), "DATABASE_URL": database.app_dsn.replace(database.name, name)}
        assert_refused(serve(env), "taskapi migrate")
    finally:
        cluster.drop_database(name)


def test_token_command_prints_a_verifiable_token():
    env = {**os.environ, "JWT_SECRET": JWT_SECRET}
    out = subprocess.run([sys.executable, "-m", "api.cli", "token", "--sub", "cli-user", "--ttl", "120"],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    claims = jwt.decode(out, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "cli-user" and 100 <= claims["exp"] - time.time() <= 121


def test_token_command_without_secret_is_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "BETTER_AUTH_SECRET")}
    result = subprocess.run([sys.executable, "-m", "api.cli", "token", "--sub", "x"], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "JWT_SECRET" in result.stderr


@pytest.mark.slow
def test_dev_runs_on_embedded_postgres_and_its_banner_works_pasted_into_a_shell():
    """`taskapi dev` from nothing: embedded PostgreSQL, migrate, serve; the banner's lines, run by bash as
    printed, create and list alice's task, show bob none, and answer bob's read of it with 403; every curl
    output ends with a newline; nothing prints a warning; the docs page it names answers."""
    # Not under tmp_path: another pytest session resets /tmp/pytest-of-root to 0700 and the server,
    # run as `embedded_postgres`, loses its data directory (see conftest.embedded_data_dir).
    with embedded_data_dir("taskapi-dev-") as pgdata:
        run_dev(pgdata.parent)


def run_dev(data_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "JWT_", "BETTER_AUTH_", "TEST_DATABASE", "XDG_RUNTIME_DIR"))}
    env.update({"PORT": str(port), "TASKAPI_DATA_DIR": str(data_dir)})
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "dev"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    base = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        # The banner ends with bob's read of alice's task; until then, a line at a time.
        while not any('$TASK -H "$BOB"' in line for line in output):
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
        banner = "".join(output)
        assert '$TASK -H "$BOB"' in banner, banner
        assert f"{base}/schema" in banner and f"{base}/schema/openapi.json" in banner
        first = next(index for index, line in enumerate(output) if line.startswith("  ALICE="))
        script = "".join(line[2:] for line in output[first:] if line.startswith("  "))  # the lines to paste
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)  # polling until the server listens
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        location, alices, bobs, forbidden = ran.stdout.split("\n")[:4]
        assert ran.stdout.endswith("\n") and ran.stdout.count("\n") == 4, ran.stdout  # each answer ends its line
        assert location.startswith("/api/tasks/")
        assert [task["title"] for task in json.loads(alices)["tasks"]] == ["Buy milk"]
        assert json.loads(bobs) == {"tasks": [], "total_count": 0, "next_cursor": None}
        assert json.loads(forbidden)["error"] == "forbidden"
        docs = httpx.get(f"{base}/schema")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
            output.append(rest)
        except subprocess.TimeoutExpired:
            process.kill()
    log = "".join(output)
    assert process.returncode == 0, log
    assert not re.search(r"\w+Warning\b", log), log  # a Python warning (RuntimeDirWarning, ...)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL left running"
