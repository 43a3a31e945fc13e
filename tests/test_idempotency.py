"""Issue #12: Idempotency-Key on POST /api/tasks (and its /api/{user_id} twin) over HTTP.

A retry with the same key and body is the original 201, byte for byte, without a second task, also
after the server died between COMMIT and the response; another body is 422; a key in flight is 409.
The same rules as the database enforces them, as taskapi_app and the auditor, are in
test_isolation_idempotency_sql.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import httpx
import psycopg
import pytest

from conftest import ROOT, Server, lock_waiters, make_user, server_env, table_locked, wait_until


def post(http, user, body, key, *, path="/api/tasks", content=None):
    headers = {**user.headers, "Idempotency-Key": key}
    if content is not None:
        return http.post(path, content=content, headers={**headers, "Content-Type": "application/json"})
    return http.post(path, json=body, headers=headers)


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def tasks_of(database, user_id: str) -> list[str]:
    """The ids of a user's tasks, read as the admin (past row-level security)."""
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM taskapi.tasks WHERE user_id = %s ORDER BY created_at",
                                                [user_id])]


def keys_of(database, user_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        return [(k, str(t)) for k, t in conn.execute(
            "SELECT key, task_id FROM taskapi.idempotency_keys WHERE user_id = %s ORDER BY key", [user_id])]


def assert_error(response, status, code, field=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"], body
    if field is not None:
        assert body["details"][0]["field"] == field, body
    return body


def test_a_retry_is_the_original_201_byte_for_byte(http, database):
    user, key = make_user(), new_key()
    first = post(http, user, {"title": "once", "tags": ["a"], "due_at": "2030-01-01T10:00:00+02:00"}, key)
    assert first.status_code == 201, first.text
    # The same request, written differently: key order, white space, the offset of due_at, a default sent.
    same = json.dumps({"due_at": "2030-01-01T08:00:00Z", "priority": "medium", "tags": ["a"],
                       "title": "  once  "}, indent=4).encode()
    for retry in (post(http, user, None, key, content=same), post(http, user, None, key, content=same)):
        assert retry.status_code == 201, retry.text
        assert retry.content == first.content
        assert retry.headers["location"] == first.headers["location"]
        assert retry.headers["etag"] == first.headers["etag"]
    assert tasks_of(database, user.id) == [first.json()["id"]]


def test_the_replay_is_the_recorded_response_even_after_the_task_changed(http, database):
    user, key = make_user(), new_key()
    first = post(http, user, {"title": "original"}, key)
    http.patch(first.headers["location"], json={"title": "edited"}, headers=user.headers)
    retry = post(http, user, {"title": "original"}, key)
    assert retry.status_code == 201 and retry.content == first.content
    assert tasks_of(database, user.id) == [first.json()["id"]]


def test_the_same_key_with_another_body_is_422(http, database):
    user, key = make_user(), new_key()
    first = post(http, user, {"title": "one thing"}, key)
    for other in ({"title": "another thing"}, {"title": "one thing", "completed": True},
                  {"title": "one thing", "tags": ["x"]}):
        assert_error(post(http, user, other, key), 422, "idempotency_key_reused")
    assert tasks_of(database, user.id) == [first.json()["id"]]


def test_a_key_in_flight_is_409(http, server, database):
    user, key = make_user(), new_key()
    outcome: dict[str, httpx.Response] = {}

    def first() -> None:
        outcome["first"] = httpx.post(f"{server.base_url}/api/tasks", json={"title": "slow"},
                                      headers={**user.headers, "Idempotency-Key": key}, timeout=60)

    with table_locked(database):
        thread = threading.Thread(target=first)
        thread.start()
        wait_until(lambda: lock_waiters(database) >= 1, timeout=20, what="the first create waiting on the lock")
        for body in ({"title": "slow"}, {"title": "a different body"}):
            busy = post(http, user, body, key)
            assert_error(busy, 409, "idempotency_key_in_flight")
            assert busy.headers["retry-after"] == "1"
    thread.join(timeout=60)
    assert outcome["first"].status_code == 201, outcome["first"].text
    retry = post(http, user, {"title": "slow"}, key)
    assert retry.status_code == 201 and retry.content == outcome["first"].content
    assert tasks_of(database, user.id) == [outcome["first"].json()["id"]]


def test_keys_are_per_user(http, database):
    alice, bob, key = make_user("alice"), make_user("bob"), new_key()
    mine = post(http, alice, {"title": "same"}, key)
    theirs = post(http, bob, {"title": "same"}, key)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"] and theirs.json()["user_id"] == bob.id
    # ...and another body from bob is his own business, not a conflict with alice's key.
    assert post(http, bob, {"title": "same"}, key).content == theirs.content
    assert post(http, alice, {"title": "same"}, key).content == mine.content
    assert tasks_of(database, alice.id) == [mine.json()["id"]]
    assert tasks_of(database, bob.id) == [theirs.json()["id"]]


def test_both_paths_share_the_users_keys(http, database):
    user, key = make_user(), new_key()
    first = post(http, user, {"title": "either way"}, key, path=f"/api/{user.id}/tasks")
    assert first.status_code == 201
    retry = post(http, user, {"title": "either way"}, key)
    assert retry.status_code == 201 and retry.content == first.content
    assert tasks_of(database, user.id) == [first.json()["id"]]


def test_an_expired_key_counts_as_absent_and_is_removed(http, database):
    user, key, other = make_user(), new_key(), new_key()
    first = post(http, user, {"title": "yesterday"}, key)
    kept = post(http, user, {"title": "today"}, other)
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE taskapi.idempotency_keys SET created_at = now() - interval '25 hours',"
                     " expires_at = now() - interval '1 hour' WHERE user_id = %s AND key = %s", [user.id, key])
    again = post(http, user, {"title": "yesterday"}, key)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert sorted(tasks_of(database, user.id)) == sorted([first.json()["id"], kept.json()["id"], again.json()["id"]])
    assert keys_of(database, user.id) == sorted([(key, again.json()["id"]), (other, kept.json()["id"])])


def test_a_create_removes_the_callers_expired_keys_only(http, database):
    alice, bob = make_user("alice"), make_user("bob")
    old_a, old_b = new_key(), new_key()
    post(http, alice, {"title": "old"}, old_a)
    post(http, bob, {"title": "old"}, old_b)
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE taskapi.idempotency_keys SET created_at = now() - interval '25 hours',"
                     " expires_at = now() - interval '1 hour' WHERE user_id = ANY(%s)", [[alice.id, bob.id]])
    fresh = post(http, alice, {"title": "new"}, new_key())
    assert [k for k, _ in keys_of(database, alice.id)] == [fresh.request.headers["idempotency-key"]]
    assert [k for k, _ in keys_of(database, bob.id)] == [old_b]
    # Without a key, a create stays the plain INSERT: no key is recorded and none is removed.
    assert http.post("/api/tasks", json={"title": "plain"}, headers=bob.headers).status_code == 201
    assert [k for k, _ in keys_of(database, bob.id)] == [old_b]


@pytest.mark.parametrize("value", ["", "has space", "k" * 256, "caf\xe9", "tab\there"])
def test_a_key_that_is_not_1_to_255_visible_ascii_characters_is_400(http, database, value):
    user = make_user()
    response = http.post("/api/tasks", json={"title": "x"},
                         headers=[*user.headers.items(), ("Idempotency-Key", value.encode("latin-1"))])
    assert_error(response, 400, "validation_error", field="Idempotency-Key")
    assert tasks_of(database, user.id) == []


def test_key_edge_cases_that_are_keys(http, database):
    user = make_user()
    for key in ("k" * 255, "!", '"quoted-as-the-draft-has-it"', "~{}[]<>"):
        assert post(http, user, {"title": key}, key).status_code == 201
    two = http.post("/api/tasks", json={"title": "x"},
                    headers=[*user.headers.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert_error(two, 400, "validation_error", field="Idempotency-Key")
    assert len(tasks_of(database, user.id)) == 4


def test_validation_comes_before_the_key(http, database):
    user, key = make_user(), new_key()
    assert_error(post(http, user, {"title": ""}, key), 400, "validation_error", field="title")
    assert keys_of(database, user.id) == []
    assert post(http, user, {"title": "valid now"}, key).status_code == 201


def test_a_retry_after_the_server_died_between_commit_and_response_gets_the_same_task(database, tmp_path):
    """The first response never leaves: the server is frozen before the commit and killed after it."""
    user, key, body = make_user("crash"), new_key(), {"title": "exactly once"}
    env = server_env(database, POSTURE_CHECK_S="86400")
    doomed = Server(env=env, log_path=tmp_path / "doomed.log", new_session=True).start()
    assert doomed.process is not None
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["response"] = httpx.post(f"{doomed.base_url}/api/tasks", json=body, timeout=60,
                                             headers={**user.headers, "Idempotency-Key": key})
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    try:
        with table_locked(database):
            thread.start()
            wait_until(lambda: lock_waiters(database) >= 1, timeout=20, what="the create waiting on the lock")
            # Frozen with its connection open: the database finishes and commits, nobody answers.
            os.killpg(doomed.process.pid, signal.SIGSTOP)
        wait_until(lambda: tasks_of(database, user.id), timeout=20, what="the commit")
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(timeout=20)
        thread.join(timeout=60)
    finally:
        if doomed.process.poll() is None:
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(timeout=20)
        doomed.stop()
    assert "error" in outcome and "response" not in outcome, outcome
    [committed] = tasks_of(database, user.id)

    revived = Server(env=env, log_path=tmp_path / "revived.log").start()
    try:
        retries = [httpx.post(f"{revived.base_url}/api/tasks", json=body, timeout=30,
                              headers={**user.headers, "Idempotency-Key": key}) for _ in range(2)]
    finally:
        revived.stop()
    assert [r.status_code for r in retries] == [201, 201], retries[0].text
    assert retries[0].json()["id"] == committed and retries[0].headers["location"] == f"/api/tasks/{committed}"
    assert retries[1].content == retries[0].content
    assert tasks_of(database, user.id) == [committed]


def test_expire_keys_removes_every_users_expired_keys(http, database):
    users = [make_user("idle") for _ in range(3)]
    keys = {user.id: (new_key(), new_key()) for user in users}
    for user in users:
        for key in keys[user.id]:
            assert post(http, user, {"title": key}, key).status_code == 201
    expired = [keys[user.id][0] for user in users]
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE taskapi.idempotency_keys SET created_at = now() - interval '25 hours',"
                     " expires_at = now() - interval '1 hour' WHERE key = ANY(%s)", [expired])
    result = subprocess.run([sys.executable, "-m", "api.cli", "expire-keys"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "DATABASE_ADMIN_URL": database.admin_dsn})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted ") and int(result.stdout.split()[1]) >= 3
    for user in users:
        assert [k for k, _ in keys_of(database, user.id)] == [keys[user.id][1]]
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        forced = conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                              " WHERE oid = 'taskapi.idempotency_keys'::regclass").fetchone()
    assert forced == (True, True)
