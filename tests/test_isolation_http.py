"""Isolation over HTTP: another user's task is 403 and untouched; compatibility paths; concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from conftest import make_user


def create(http, user, title="task"):
    response = http.post("/api/tasks", json={"title": title}, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_forbidden_without_leak(response, task):
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "forbidden"
    text = response.text
    assert task["title"] not in text and task["user_id"] not in text


@pytest.mark.parametrize("method, suffix, body", [
    ("GET", "", None),
    ("PUT", "", {"title": "hijacked"}),
    ("PATCH", "", {"completed": True}),
    ("PATCH", "/toggle", None),
    ("DELETE", "", None),
])
def test_another_users_task_is_403_and_untouched(http, alice, bob, method, suffix, body):
    task = create(http, alice, title=f"alice-secret-{alice.id}")
    response = http.request(method, f"/api/tasks/{task['id']}{suffix}", json=body, headers=bob.headers)
    assert_forbidden_without_leak(response, task)
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task


def test_lists_contain_only_the_callers_tasks(http, alice, bob):
    mine = {create(http, alice, f"a{i}")["id"] for i in range(3)}
    theirs = {create(http, bob, f"b{i}")["id"] for i in range(2)}
    alice_list = http.get("/api/tasks", headers=alice.headers).json()
    bob_list = http.get("/api/tasks", headers=bob.headers).json()
    assert {t["id"] for t in alice_list["tasks"]} == mine and alice_list["total_count"] == 3
    assert {t["id"] for t in bob_list["tasks"]} == theirs and bob_list["total_count"] == 2
    assert all(t["user_id"] == alice.id for t in alice_list["tasks"])


def test_compat_paths_behave_like_the_canonical_ones(http, alice):
    base = f"/api/{alice.id}/tasks"
    created = http.post(base, json={"title": "compat"}, headers=alice.headers)
    assert created.status_code == 201
    task = created.json()
    assert created.headers["location"] == f"/api/tasks/{task['id']}"
    assert http.get(base, headers=alice.headers).json()["tasks"][0] == task
    assert http.get(f"{base}/{task['id']}", headers=alice.headers).json() == task
    assert http.put(f"{base}/{task['id']}", json={"title": "put"}, headers=alice.headers).json()["title"] == "put"
    assert http.patch(f"{base}/{task['id']}", json={"title": "patch"}, headers=alice.headers).json()["title"] == "patch"
    assert http.patch(f"{base}/{task['id']}/complete", headers=alice.headers).json()["completed"] is True
    assert http.delete(f"{base}/{task['id']}", headers=alice.headers).json() == {"message": "Task deleted"}
    assert http.get(f"{base}/{task['id']}", headers=alice.headers).status_code == 404


@pytest.mark.parametrize("method, suffix, body", [
    ("GET", "", None), ("POST", "", {"title": "x"}), ("GET", "/{id}", None), ("PUT", "/{id}", {"title": "x"}),
    ("PATCH", "/{id}", {"title": "x"}), ("DELETE", "/{id}", None), ("PATCH", "/{id}/complete", None),
])
def test_compat_path_with_another_user_id_is_403_before_any_data(http, alice, bob, method, suffix, body):
    task = create(http, alice, title=f"alice-secret-{alice.id}")
    # bob addresses alice's path with his own token: refused, whatever the task id or body
    path = f"/api/{alice.id}/tasks" + suffix.format(id=task["id"])
    assert_forbidden_without_leak(http.request(method, path, json=body, headers=bob.headers), task)
    # even with a malformed body or unknown id, the path check comes first
    bogus = f"/api/{alice.id}/tasks" + suffix.format(id="not-a-uuid")
    assert http.request(method, bogus, content=b"{bad", headers={**bob.headers, "Content-Type": "application/json"}
                        ).status_code == 403
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task
    assert http.get("/api/tasks", headers=bob.headers).json()["total_count"] == 0


def test_compat_path_needs_a_token_first(http, alice):
    response = http.get(f"/api/{alice.id}/tasks")
    assert response.status_code == 401


def test_many_users_concurrently_see_only_their_own(server):
    users = [make_user("conc") for _ in range(20)]

    def work(user):
        with httpx.Client(base_url=server.base_url, timeout=20) as client:
            ids = {create(client, user, f"{user.id}-{i}")["id"] for i in range(5)}
            listed = client.get("/api/tasks", headers=user.headers).json()
            return ids, listed

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(work, users))
    for user, (ids, listed) in zip(users, results, strict=True):
        assert listed["total_count"] == 5
        assert {t["id"] for t in listed["tasks"]} == ids
        assert {t["user_id"] for t in listed["tasks"]} == {user.id}


TOGGLES = 24


def test_concurrent_toggles_are_each_applied(server, database, alice):
    """TOGGLES concurrent toggles of one task: every one flips it, none is lost.

    Read-then-write in two steps would let two toggles read the same value and write the same
    result: one flip lost. Ordered by `updated_at` (strictly increasing, see the trigger in
    0001_tasks.sql), the responses must then show `completed` alternating from the starting value,
    each flip reported once; a single lost update breaks the alternation (two neighbours agree)
    and the final value's parity, whatever the number of others.
    """
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        task = create(client, alice, "toggle race")
    clients = [httpx.Client(base_url=server.base_url, timeout=30) for _ in range(TOGGLES)]
    start = threading.Barrier(TOGGLES)

    def toggle(client: httpx.Client) -> httpx.Response:
        assert client.get("/health").status_code == 200  # the connection is open before the race starts
        start.wait(timeout=30)
        return client.patch(f"/api/tasks/{task['id']}/toggle", headers=alice.headers)

    try:
        with ThreadPoolExecutor(max_workers=TOGGLES) as pool:
            responses = list(pool.map(toggle, clients))
    finally:
        for client in clients:
            client.close()
    assert [r.status_code for r in responses] == [200] * TOGGLES, [r.text for r in responses]
    chain = sorted((r.json() for r in responses), key=lambda t: t["updated_at"])
    stamps = [t["updated_at"] for t in chain]
    assert len(set(stamps)) == TOGGLES, f"two toggles reported the same update: {stamps}"
    assert stamps[0] > task["updated_at"]
    flips = [t["completed"] for t in chain]
    assert flips == [i % 2 == 0 for i in range(TOGGLES)], f"a toggle was lost (completed in update order): {flips}"
    with psycopg.connect(database.admin_dsn) as conn:  # the row itself, past RLS
        (row,) = conn.execute("SELECT taskapi.task_json(t) FROM taskapi.tasks AS t WHERE t.id = %s",
                              [task["id"]]).fetchone()
    assert row == chain[-1], "the stored row is not the last toggle's result"
    assert row["completed"] is (TOGGLES % 2 == 1)
