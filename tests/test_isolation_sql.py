"""What the database itself allows, connected as the runtime role (and the auditor), with no API involved."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
import pytest
from psycopg import errors

from api.config import Settings
from api.db import Database as ApiDatabase
from api.pipeline import Statement
from conftest import JWT_SECRET, pooler_env


def claims(user_id: str) -> str:
    return json.dumps({"sub": user_id})


def as_user(conn: psycopg.Connection, user_id: str | None) -> None:
    """Start a transaction with this user's claims, exactly as the API does (transaction-local)."""
    conn.execute("BEGIN")
    if user_id is not None:
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [claims(user_id)])


def insert_task(conn: psycopg.Connection, user_id: str, title: str = "t") -> uuid.UUID:
    as_user(conn, user_id)
    task_id = conn.execute("INSERT INTO taskapi.tasks (title) VALUES (%s) RETURNING id", [title]).fetchone()[0]
    conn.execute("COMMIT")
    return task_id


@pytest.fixture
def app_conn(database):
    # No server-side prepared statements: under TEST_POOLER_URL this goes through a transaction pooler.
    with psycopg.connect(database.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        yield conn


@pytest.fixture
def users():
    return f"sql-a-{uuid.uuid4().hex[:8]}", f"sql-b-{uuid.uuid4().hex[:8]}"


def test_runtime_role_is_not_privileged(app_conn):
    row = app_conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
    assert app_conn.info.user == "taskapi_app"
    assert row == (False, False)
    owned = app_conn.execute(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()[0]
    assert owned == 0
    assert app_conn.execute("SELECT pg_has_role('taskapi_owner', 'MEMBER')").fetchone()[0] is False
    rls = app_conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                           "WHERE oid = 'taskapi.tasks'::regclass").fetchone()
    assert rls == (True, True)


@pytest.mark.parametrize("privilege", ["TRUNCATE", "REFERENCES", "TRIGGER"])
def test_runtime_role_lacks_dangerous_privileges(app_conn, privilege):
    assert app_conn.execute("SELECT has_table_privilege('taskapi.tasks', %s)", [privilege]).fetchone()[0] is False


def test_runtime_role_cannot_truncate_or_create(app_conn):
    with pytest.raises(errors.InsufficientPrivilege):
        app_conn.execute("TRUNCATE taskapi.tasks")
    with pytest.raises(errors.InsufficientPrivilege):
        app_conn.execute("CREATE TABLE taskapi.sneaky (id int)")
    with pytest.raises(errors.InsufficientPrivilege):
        app_conn.execute("ALTER TABLE taskapi.tasks DISABLE ROW LEVEL SECURITY")


def test_no_claims_sees_and_changes_nothing(app_conn, users):
    a, _ = users
    task_id = insert_task(app_conn, a)
    as_user(app_conn, None)
    assert app_conn.execute("SELECT taskapi.current_user_id()").fetchone()[0] is None
    assert app_conn.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 0
    assert app_conn.execute("UPDATE taskapi.tasks SET title = 'x' WHERE id = %s", [task_id]).rowcount == 0
    assert app_conn.execute("DELETE FROM taskapi.tasks WHERE id = %s", [task_id]).rowcount == 0
    with pytest.raises((errors.InsufficientPrivilege, errors.NotNullViolation)):
        app_conn.execute("INSERT INTO taskapi.tasks (title) VALUES ('orphan')")
    app_conn.execute("ROLLBACK")


def test_empty_setting_on_a_reused_connection_means_nobody(app_conn, users):
    a, _ = users
    insert_task(app_conn, a)
    # After a transaction that set the claims, the setting reads '' on this same connection (NULL when a
    # transaction pooler hands this statement a server connection that never had it).
    assert app_conn.execute("SELECT current_setting('request.jwt.claims', true)").fetchone()[0] in ("", None)
    assert app_conn.execute("SELECT taskapi.current_user_id()").fetchone()[0] is None
    assert app_conn.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 0


def test_empty_sub_and_garbage_claims_mean_nobody(app_conn, users):
    a, _ = users
    insert_task(app_conn, a)
    for value in ('{"sub": ""}', '{}', '{"sub": null}'):
        app_conn.execute("BEGIN")
        app_conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [value])
        assert app_conn.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 0, value
        app_conn.execute("ROLLBACK")


def test_other_users_claims_see_only_their_rows(app_conn, users):
    a, b = users
    a_task = insert_task(app_conn, a, "a's")
    b_task = insert_task(app_conn, b, "b's")
    as_user(app_conn, b)
    rows = app_conn.execute("SELECT id, user_id FROM taskapi.tasks").fetchall()
    assert rows == [(b_task, b)]
    assert app_conn.execute("SELECT count(*) FROM taskapi.tasks WHERE id = %s", [a_task]).fetchone()[0] == 0
    assert app_conn.execute("UPDATE taskapi.tasks SET title = 'mine now' WHERE id = %s", [a_task]).rowcount == 0
    assert app_conn.execute("DELETE FROM taskapi.tasks WHERE id = %s", [a_task]).rowcount == 0
    app_conn.execute("COMMIT")
    as_user(app_conn, a)
    assert app_conn.execute("SELECT title FROM taskapi.tasks WHERE id = %s", [a_task]).fetchone() == ("a's",)
    app_conn.execute("ROLLBACK")


def test_insert_as_someone_else_is_refused(app_conn, users):
    a, b = users
    as_user(app_conn, a)
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_conn.execute("INSERT INTO taskapi.tasks (user_id, title) VALUES (%s, 'forged')", [b])
    app_conn.execute("ROLLBACK")


def test_update_cannot_move_a_row_to_another_owner(app_conn, users):
    a, b = users
    task_id = insert_task(app_conn, a)
    as_user(app_conn, a)
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_conn.execute("UPDATE taskapi.tasks SET user_id = %s WHERE id = %s", [b, task_id])
    app_conn.execute("ROLLBACK")
    as_user(app_conn, a)
    assert app_conn.execute("SELECT user_id FROM taskapi.tasks WHERE id = %s", [task_id]).fetchone() == (a,)
    app_conn.execute("ROLLBACK")


def test_claims_do_not_outlive_their_transaction(app_conn, users):
    a, _ = users
    insert_task(app_conn, a)
    as_user(app_conn, a)
    assert app_conn.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 1
    app_conn.execute("COMMIT")
    assert app_conn.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 0


def test_task_exists_reveals_existence_only(app_conn, users):
    a, b = users
    task_id = insert_task(app_conn, a)
    as_user(app_conn, b)
    assert app_conn.execute("SELECT taskapi.task_exists(%s)", [task_id]).fetchone()[0] is True
    assert app_conn.execute("SELECT taskapi.task_exists(%s)", [uuid.uuid4()]).fetchone()[0] is False
    app_conn.execute("ROLLBACK")
    # The same role, with no claims at all.
    with psycopg.connect(app_conn.info.dsn, autocommit=True, prepare_threshold=None) as fresh:
        assert fresh.execute("SELECT taskapi.task_exists(%s)", [task_id]).fetchone()[0] is True


def test_constraints_hold_whoever_writes(database, users):
    a, _ = users
    bad_rows = [("", None), ("x" * 256, None), (" padded ", None), ("ok", ""), ("ok", "d" * 1001), ("ok", "   ")]
    with psycopg.connect(database.admin_dsn, autocommit=True) as admin:  # a superuser, past RLS
        for title, description in bad_rows:
            with pytest.raises(errors.CheckViolation):
                admin.execute("INSERT INTO taskapi.tasks (user_id, title, description) VALUES (%s, %s, %s)",
                              [a, title, description])
        with pytest.raises(errors.CheckViolation):
            admin.execute("INSERT INTO taskapi.tasks (user_id, title) VALUES ('', 'x')")
        with pytest.raises(errors.NotNullViolation):
            admin.execute("INSERT INTO taskapi.tasks (title) VALUES ('x')")  # no claims: no user_id


def test_auditor_reads_under_the_same_policies_and_cannot_write(database, app_conn, users):
    a, b = users
    a_task = insert_task(app_conn, a, "audited")
    insert_task(app_conn, b)
    with psycopg.connect(database.auditor_dsn, autocommit=True, prepare_threshold=None) as auditor:
        assert auditor.execute("SELECT count(*) FROM taskapi.tasks").fetchone()[0] == 0
        auditor.execute("BEGIN READ ONLY")
        auditor.execute("SELECT set_config('request.jwt.claims', %s, true)", [claims(a)])
        assert auditor.execute("SELECT id, title FROM taskapi.tasks").fetchall() == [(a_task, "audited")]
        auditor.execute("ROLLBACK")
        for statement in ("INSERT INTO taskapi.tasks (user_id, title) VALUES ('x', 'x')",
                          "UPDATE taskapi.tasks SET title = 'x'", "DELETE FROM taskapi.tasks",
                          "TRUNCATE taskapi.tasks"):
            with pytest.raises(errors.InsufficientPrivilege):
                auditor.execute(statement)


def test_pooled_connection_never_carries_identity_between_requests(database):
    """Pool of size 1, two users interleaved through the API's own request path (api.db)."""
    settings = Settings.from_env({"DATABASE_URL": database.app_dsn, "JWT_SECRET": JWT_SECRET, "DB_POOL_SIZE": "1",
                                  **pooler_env(database)})
    a, b = f"pool-a-{uuid.uuid4().hex[:8]}", f"pool-b-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        db = ApiDatabase(settings)
        await db.open()
        try:
            insert = Statement("INSERT INTO taskapi.tasks (title) VALUES (%(title)s) RETURNING user_id")
            count = Statement("SELECT count(*), coalesce(string_agg(DISTINCT user_id, ','), '') FROM taskapi.tasks")
            for i in range(10):
                for user in (a, b):
                    assert await db.fetch_one(user, insert, {"title": f"{user}-{i}"}) == (user.encode(),)
                    assert await db.fetch_one(user, count, {}) == (str(i + 1).encode(), user.encode())
            async with db.pool.connection() as conn:  # the one pooled connection, after both users
                cur = await conn.execute("SELECT current_setting('request.jwt.claims', true),"
                                         " (SELECT count(*) FROM taskapi.tasks)")
                claims, visible = await cur.fetchone()
                assert claims in ("", None) and visible == 0  # None: a transaction pooler's other server connection
        finally:
            await db.close()

    asyncio.run(scenario())


def test_pooled_connection_many_users_concurrently(database):
    """Many users' requests interleaved on two connections, concurrently: each sees only their own rows."""
    settings = Settings.from_env({"DATABASE_URL": database.app_dsn, "JWT_SECRET": JWT_SECRET, "DB_POOL_SIZE": "2",
                                  **pooler_env(database)})
    users = [f"many-{i}-{uuid.uuid4().hex[:6]}" for i in range(25)]

    async def scenario() -> None:
        db = ApiDatabase(settings)
        await db.open()
        insert = Statement("INSERT INTO taskapi.tasks (title) VALUES (%(t)s) RETURNING id")
        count = Statement("SELECT string_agg(DISTINCT user_id, ','), count(*) FROM taskapi.tasks")
        try:
            async def one(user: str) -> None:
                for i in range(4):
                    await db.fetch_one(user, insert, {"t": f"t{i}"})
                    seen = await db.fetch_one(user, count, {})
                    assert seen == (user.encode(), str(i + 1).encode())

            await asyncio.gather(*(one(u) for u in users))
        finally:
            await db.close()

    asyncio.run(scenario())
