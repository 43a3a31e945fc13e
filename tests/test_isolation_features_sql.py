"""Issue #13's features as the database allows them, connected as taskapi_app and taskapi_auditor, no API involved.

The API's own statements (search, tags, bulk clear, the counts of a list) run here with a user's
claims, exactly as a request sends them; what they reach is decided by the policies alone.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import errors
from test_isolation_sql import as_user

from api.listing import CLEAR_COMPLETED, LIST_TAGS, list_statement
from api.pipeline import Statement


def run(conn: psycopg.Connection, statement: Statement, params: dict[str, object]) -> tuple[object, ...]:
    """A Statement, with its `%(name)s` parameters, through psycopg (client-side: no prepared statements)."""
    row = conn.execute(statement.sql, params, prepare=False).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def seeded(conns):
    """Two users, each with a completed and an open task that both carry the tag `Shared` and the word `milk`."""
    app, _ = conns
    users = (f"feat-a-{uuid.uuid4().hex[:8]}", f"feat-b-{uuid.uuid4().hex[:8]}")
    for user in users:
        as_user(app, user)
        app.execute("INSERT INTO taskapi.tasks (title, tags, completed) VALUES "
                    "('milk ' || %(u)s, '{Shared}', true), ('milk too', '{Shared,own}', false)", {"u": user})
        app.execute("COMMIT")
    return users


def test_search_filters_and_counts_reach_only_the_callers_rows(conns, seeded):
    a, b = seeded
    statement = list_statement("created_at", "desc", frozenset({"q", "tag"}), None, False)
    params = {"limit": 50, "offset": 0, "patterns": ["%milk%"], "tags": ["shared"]}
    for conn in conns:  # the runtime role, and the auditor impersonating the user
        as_user(conn, a)
        tasks, total, _ = run(conn, statement, {**params, "user_id": a})
        conn.execute("ROLLBACK")
        assert total == "2" and b not in str(tasks) and a in str(tasks)
        # The statement's own user_id is a hint for the planner; naming another user reaches nothing.
        as_user(conn, a)
        tasks, total, _ = run(conn, statement, {**params, "user_id": b})
        conn.execute("ROLLBACK")
        assert (tasks, total) == ("[]", "0")


def test_unfiltered_counts_come_from_the_callers_row_only(conns, seeded):
    a, _ = seeded
    statement = list_statement("created_at", "desc", frozenset(), None, False)
    for conn in conns:
        as_user(conn, a)
        _, total, _ = run(conn, statement, {"limit": 50, "offset": 0, "user_id": a})
        visible = conn.execute("SELECT user_id, total, completed FROM taskapi.task_counts").fetchall()
        conn.execute("ROLLBACK")
        assert total == "2" and visible == [(a, 2, 1)]
        as_user(conn, None)
        assert conn.execute("SELECT count(*) FROM taskapi.task_counts").fetchone() == (0,)
        conn.execute("ROLLBACK")


def test_tags_are_the_callers_only(conns, seeded):
    a, _ = seeded
    for conn in conns:
        as_user(conn, a)
        (tags,) = run(conn, LIST_TAGS, {"user_id": a})
        conn.execute("ROLLBACK")
        assert json.loads(str(tags)) == {"tags": [{"tag": "Shared", "count": 2}, {"tag": "own", "count": 1}]}
        as_user(conn, a)
        (tags,) = run(conn, LIST_TAGS, {"user_id": seeded[1]})
        conn.execute("ROLLBACK")
        assert json.loads(str(tags)) == {"tags": []}


def test_clearing_completed_tasks_reaches_only_the_callers_and_the_auditor_cannot(conns, seeded):
    app, auditor = conns
    a, b = seeded
    as_user(auditor, a)
    with pytest.raises(errors.InsufficientPrivilege):
        run(auditor, CLEAR_COMPLETED, {})
    auditor.execute("ROLLBACK")
    as_user(app, a)
    assert json.loads(str(run(app, CLEAR_COMPLETED, {})[0])) == {"deleted": 1}
    app.execute("COMMIT")
    as_user(app, b)
    assert app.execute("SELECT count(*), count(*) FILTER (WHERE completed) FROM taskapi.tasks").fetchone() == (2, 1)
    assert app.execute("SELECT total, completed FROM taskapi.task_counts").fetchone() == (2, 1)
    app.execute("ROLLBACK")


def test_nobody_moves_another_users_counts(conns, seeded):
    app, auditor = conns
    a, b = seeded
    as_user(app, a)
    assert app.execute("UPDATE taskapi.task_counts SET total = 99 WHERE user_id = %s", [b]).rowcount == 0
    app.execute("ROLLBACK")
    as_user(app, a)
    with pytest.raises(errors.InsufficientPrivilege):  # WITH CHECK: not as someone else
        app.execute("INSERT INTO taskapi.task_counts (user_id) VALUES (%s)", [f"{b}-new"])
    app.execute("ROLLBACK")
    as_user(app, a)
    with pytest.raises(errors.InsufficientPrivilege):  # no DELETE at all
        app.execute("DELETE FROM taskapi.task_counts")
    app.execute("ROLLBACK")
    as_user(auditor, a)
    with pytest.raises(errors.InsufficientPrivilege):
        auditor.execute("UPDATE taskapi.task_counts SET total = 0")
    auditor.execute("ROLLBACK")


def test_a_recurring_task_spawns_for_its_owner_only(conns):
    app, _ = conns
    a, b = f"rec-a-{uuid.uuid4().hex[:8]}", f"rec-b-{uuid.uuid4().hex[:8]}"
    as_user(app, a)
    task = app.execute("INSERT INTO taskapi.tasks (title, due_at, recurrence) VALUES ('r', now(), 'daily') "
                       "RETURNING id").fetchone()[0]
    app.execute("COMMIT")
    as_user(app, b)  # another user cannot complete it, so nothing spawns
    assert app.execute("UPDATE taskapi.tasks SET completed = true WHERE id = %s", [task]).rowcount == 0
    app.execute("COMMIT")
    as_user(app, a)
    spawned = app.execute("UPDATE taskapi.tasks SET completed = true WHERE id = %s RETURNING next_task_id",
                          [task]).fetchone()[0]
    owner = app.execute("SELECT user_id FROM taskapi.tasks WHERE id = %s", [spawned]).fetchone()[0]
    app.execute("COMMIT")
    assert owner == a
