"""taskapi.idempotency_keys and taskapi.create_task_once as the database allows them, as taskapi_app and the auditor.

No API involved: the API's own statement (api/idempotency.py) runs here with a user's claims, exactly
as a request sends it, and what it reaches is decided by the policies of
sql/policies/idempotency_keys.sql alone.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import errors
from test_isolation_sql import as_user

from api.idempotency import CREATE_TASK_ONCE

HASH = "0" * 64
OTHER_HASH = "f" * 64


def create_once(conn: psycopg.Connection, user: str, key: str, title: str = "t", request_hash: str = HASH
                ) -> tuple[object, ...]:
    """The API's create-with-a-key statement as `user`, committed."""
    as_user(conn, user)
    row = conn.execute(CREATE_TASK_ONCE.sql, {
        "key": key, "request_hash": request_hash, "title": title, "description": None, "completed": False,
        "due_at": None, "priority": 2, "tags": [], "recurrence": None}, prepare=False).fetchone()
    conn.execute("COMMIT")
    assert row is not None
    return tuple(row)


@pytest.fixture
def keyed(conns):
    """Two users who each created a task with the same key."""
    app, _ = conns
    users = (f"idem-a-{uuid.uuid4().hex[:8]}", f"idem-b-{uuid.uuid4().hex[:8]}")
    for user in users:
        outcome, *_ = create_once(app, user, "shared-key", title=f"from {user}")
        assert outcome == "created"
    return users


def test_the_function_creates_once_per_user_and_key(conns, keyed):
    app, _ = conns
    a, b = keyed
    replay_a = create_once(app, a, "shared-key", title="ignored on a replay")
    replay_b = create_once(app, b, "shared-key")
    assert replay_a[0] == replay_b[0] == "replayed"
    assert replay_a[1] != replay_b[1]
    assert f'"user_id" : "{a}"' in replay_a[2] and b not in replay_a[2]
    assert create_once(app, a, "shared-key", request_hash=OTHER_HASH) == ("mismatch", None, None, None)
    as_user(app, a)
    assert app.execute("SELECT count(*) FROM taskapi.tasks").fetchone() == (1,)
    app.execute("ROLLBACK")


def test_each_role_reads_only_the_callers_keys(conns, keyed):
    a, _ = keyed
    for conn in conns:
        as_user(conn, a)
        rows = conn.execute("SELECT user_id, key FROM taskapi.idempotency_keys").fetchall()
        conn.execute("ROLLBACK")
        assert rows == [(a, "shared-key")]
        as_user(conn, None)
        assert conn.execute("SELECT count(*) FROM taskapi.idempotency_keys").fetchone() == (0,)
        conn.execute("ROLLBACK")


def test_nobody_writes_another_users_keys(conns, keyed):
    app, _ = conns
    a, b = keyed
    task_id = uuid.uuid4()
    as_user(app, a)
    with pytest.raises(errors.InsufficientPrivilege):  # the insert policy's WITH CHECK
        app.execute("INSERT INTO taskapi.idempotency_keys (user_id, key, request_hash, task_id, body, etag)"
                    " VALUES (%s, 'planted', %s, %s, '{}', '\"x\"')", [b, HASH, task_id])
    app.execute("ROLLBACK")
    as_user(app, None)
    with pytest.raises(errors.InsufficientPrivilege):  # no identity, no row of anyone's
        app.execute("INSERT INTO taskapi.idempotency_keys (user_id, key, request_hash, task_id, body, etag)"
                    " VALUES (%s, 'planted', %s, %s, '{}', '\"x\"')", [b, HASH, task_id])
    app.execute("ROLLBACK")
    # Her own key is not expired, and bob's is not hers: nothing to delete.
    as_user(app, a)
    assert app.execute("DELETE FROM taskapi.idempotency_keys").rowcount == 0
    app.execute("COMMIT")
    as_user(app, a)
    with pytest.raises(errors.InsufficientPrivilege):  # no UPDATE: a recorded response never changes
        app.execute("UPDATE taskapi.idempotency_keys SET body = '{}'")
    app.execute("ROLLBACK")
    for user in keyed:
        as_user(app, user)
        assert app.execute("SELECT count(*) FROM taskapi.idempotency_keys").fetchone() == (1,)
        app.execute("ROLLBACK")


def test_only_expired_keys_of_ones_own_can_be_deleted(conns, keyed, database):
    app, _ = conns
    a, b = keyed
    with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
        admin.execute("UPDATE taskapi.idempotency_keys SET created_at = now() - interval '25 hours',"
                      " expires_at = now() - interval '1 hour' WHERE user_id = ANY(%s)", [[a, b]])
    as_user(app, a)
    assert app.execute("DELETE FROM taskapi.idempotency_keys").rowcount == 1
    app.execute("COMMIT")
    as_user(app, b)
    assert app.execute("SELECT count(*) FROM taskapi.idempotency_keys").fetchone() == (1,)
    app.execute("ROLLBACK")


def test_the_auditor_writes_nothing(conns, keyed):
    _, auditor = conns
    a, _ = keyed
    for statement in ("INSERT INTO taskapi.idempotency_keys (key, request_hash, task_id, body, etag)"
                      " VALUES ('k', '" + HASH + "', gen_random_uuid(), '{}', '\"x\"')",
                      "DELETE FROM taskapi.idempotency_keys",
                      "UPDATE taskapi.idempotency_keys SET body = '{}'",
                      "SELECT * FROM taskapi.create_task_once('k', '" + HASH + "', 't', NULL, false, NULL, 2::smallint,"
                      " '{}', NULL)"):
        as_user(auditor, a)
        with pytest.raises(errors.InsufficientPrivilege):
            auditor.execute(statement)
        auditor.execute("ROLLBACK")


def test_the_table_is_protected_and_granted_exactly(conns, database):
    app, _ = conns
    assert app.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                       " WHERE oid = 'taskapi.idempotency_keys'::regclass").fetchone() == (True, True)
    granted = {}
    for role in ("taskapi_app", "taskapi_auditor"):
        granted[role] = {p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
                         if app.execute("SELECT has_table_privilege(%s, 'taskapi.idempotency_keys', %s)",
                                        [role, p]).fetchone()[0]}
    assert granted == {"taskapi_app": {"SELECT", "INSERT", "DELETE"}, "taskapi_auditor": {"SELECT"}}
    function = "taskapi.create_task_once(text, text, text, text, boolean, timestamptz, smallint, text[], text)"
    executes = {role: app.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", [role, function]).fetchone()[0]
                for role in ("taskapi_app", "taskapi_auditor", "public")}
    assert executes == {"taskapi_app": True, "taskapi_auditor": False, "public": False}
    with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
        security = admin.execute("SELECT prosecdef, proconfig FROM pg_proc WHERE oid = %s::regprocedure",
                                 [function]).fetchone()
        findings = admin.execute("SELECT \"check\", severity, detail FROM taskapi_audit.findings()"
                                 " WHERE object LIKE '%%idempotency%%'").fetchall()
    assert security == (False, ["search_path=pg_catalog, pg_temp"])
    assert findings == []  # no UPDATE policy is needed where no UPDATE is granted
