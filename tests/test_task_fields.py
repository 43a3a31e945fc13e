"""The fields of CONTRACT.md v1.2 (issue #13): due_at, priority, tags, recurrence, next_task_id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from test_tasks_http import assert_validation, create

from conftest import make_user


def test_a_v1_body_gets_the_defaults(http, alice):
    task = create(http, alice, title="plain")
    assert (task["due_at"], task["priority"], task["tags"], task["recurrence"], task["next_task_id"]) == (
        None, "medium", [], None, None)


def test_every_field_round_trips_and_due_at_comes_back_in_utc(http, alice):
    task = create(http, alice, title="all", due_at="2026-12-24T18:30:00.5+01:00", priority="high",
                  tags=["  Gifts ", "family"], recurrence="weekly")
    assert task["due_at"] == "2026-12-24T17:30:00.500000Z"
    assert (task["priority"], task["tags"], task["recurrence"]) == ("high", ["Gifts", "family"], "weekly")
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task
    changed = http.patch(f"/api/tasks/{task['id']}", json={"priority": "low", "tags": [], "recurrence": None,
                                                           "due_at": None}, headers=alice.headers).json()
    assert (changed["priority"], changed["tags"], changed["recurrence"], changed["due_at"]) == ("low", [], None, None)
    assert changed["title"] == "all"


def test_any_rfc3339_offset_is_accepted(http, alice):
    # PostgreSQL's own input stops at ±15:59; RFC 3339 goes to ±23:59 (schemathesis found it).
    task = create(http, alice, title="far east", due_at="2700-11-29T02:17:18+19:56")
    assert task["due_at"] == "2700-11-28T06:21:18.000000Z"
    assert create(http, alice, title="far west", due_at="2026-01-01T00:00:00-23:59")["due_at"] == (
        "2026-01-01T23:59:00.000000Z")


def test_tags_repeated_ignoring_case_are_kept_once_as_first_written(http, alice):
    assert create(http, alice, title="t", tags=["Milk", "milk", " MILK ", "eggs"])["tags"] == ["Milk", "eggs"]


@pytest.mark.parametrize(("body", "field"), [
    ({"due_at": "2026-12-24T18:30:00"}, "due_at"),  # no offset
    ({"due_at": "2026-12-24"}, "due_at"),
    ({"due_at": "tomorrow"}, "due_at"),
    ({"due_at": 1766600000}, "due_at"),
    ({"due_at": "0999-12-24T18:30:00Z"}, "due_at"),
    ({"due_at": "3000-01-01T00:00:00Z"}, "due_at"),
    ({"priority": "urgent"}, "priority"),
    ({"priority": 3}, "priority"),
    ({"priority": None}, "priority"),
    ({"tags": "milk"}, "tags"),
    ({"tags": [1]}, "tags[0]"),
    ({"tags": [None]}, "tags[0]"),
    ({"tags": [" "]}, "tags[0]"),
    ({"tags": ["ok", "x" * 51]}, "tags[1]"),
    ({"tags": ["a\x00b"]}, "tags[0]"),
    ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
    ({"recurrence": "yearly", "due_at": "2026-12-24T18:30:00Z"}, "recurrence"),
    ({"recurrence": "daily"}, "recurrence"),  # needs a due_at
    ({"recurrence": "daily", "due_at": None}, "recurrence"),
    ({"next_task_id": None}, "next_task_id"),  # read-only
])
def test_bad_fields_are_400_naming_them_and_nothing_is_stored(http, body, field):
    user = make_user()
    assert_validation(http.post("/api/tasks", json={"title": "x", **body}, headers=user.headers), field)
    assert http.get("/api/tasks", headers=user.headers).json()["total_count"] == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"recurrence": "daily"}, "recurrence"),  # the stored task has no due_at
    ({"tags": ["a"] * 2 + [f"t{i}" for i in range(20)]}, "tags"),
    ({"priority": "none"}, "priority"),
    ({"due_at": "soon"}, "due_at"),
])
def test_bad_changes_are_400_and_change_nothing(http, alice, body, field):
    task = create(http, alice, title="x")
    for method in ("PUT", "PATCH"):
        assert_validation(http.request(method, f"/api/tasks/{task['id']}", json=body, headers=alice.headers), field)
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task


def test_removing_the_due_at_of_a_recurring_task_is_400(http, alice):
    task = create(http, alice, title="x", due_at="2026-01-01T00:00:00Z", recurrence="daily")
    assert_validation(http.patch(f"/api/tasks/{task['id']}", json={"due_at": None}, headers=alice.headers),
                      "recurrence")


# --- recurring tasks -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("recurrence", "due_at", "next_due_at"), [
    ("daily", "2026-12-31T23:30:00Z", "2027-01-01T23:30:00.000000Z"),
    ("weekly", "2026-12-29T08:00:00-05:00", "2027-01-05T13:00:00.000000Z"),
    ("monthly", "2027-01-31T09:00:00Z", "2027-02-28T09:00:00.000000Z"),  # month end clamps
    ("monthly", "2028-01-31T09:00:00Z", "2028-02-29T09:00:00.000000Z"),  # leap year
    ("monthly", "2026-03-31T09:00:00Z", "2026-04-30T09:00:00.000000Z"),
    ("monthly", "2026-12-15T09:00:00Z", "2027-01-15T09:00:00.000000Z"),
])
@pytest.mark.parametrize("complete", ["patch", "put", "toggle"])
def test_completing_a_recurring_task_creates_its_next_occurrence(http, alice, recurrence, due_at, next_due_at,
                                                                 complete):
    task = create(http, alice, title="water plants", description="all of them", priority="high",
                  tags=["home"], due_at=due_at, recurrence=recurrence)
    url = f"/api/tasks/{task['id']}"
    response = (http.patch(f"{url}/toggle", headers=alice.headers) if complete == "toggle"
                else http.request(complete.upper(), url, json={"completed": True}, headers=alice.headers))
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["completed"] is True and done["next_task_id"]
    following = http.get(f"/api/tasks/{done['next_task_id']}", headers=alice.headers).json()
    assert following["due_at"] == next_due_at
    same = ("title", "description", "priority", "tags", "recurrence", "user_id")
    assert {k: following[k] for k in same} == {k: task[k] for k in same}
    assert following["completed"] is False and following["next_task_id"] is None
    assert http.get("/api/tasks", headers=alice.headers).json()["total_count"] == 2


def test_uncompleting_and_completing_again_creates_no_other_occurrence(http, alice):
    task = create(http, alice, title="x", due_at="2026-01-01T00:00:00Z", recurrence="daily")
    url = f"/api/tasks/{task['id']}"
    first = http.patch(f"{url}/toggle", headers=alice.headers).json()["next_task_id"]
    undone = http.patch(f"{url}/toggle", headers=alice.headers).json()
    assert undone["completed"] is False and undone["next_task_id"] == first
    again = http.patch(url, json={"completed": True}, headers=alice.headers).json()
    assert again["next_task_id"] == first
    assert http.get("/api/tasks", headers=alice.headers).json()["total_count"] == 2
    # A task created completed is not "completed" by anyone: no occurrence either.
    create(http, alice, title="y", due_at="2026-01-01T00:00:00Z", recurrence="daily", completed=True)
    assert http.get("/api/tasks", headers=alice.headers).json()["total_count"] == 3


def test_completing_twice_at_once_creates_exactly_one_occurrence(http, database, alice):
    tasks = [create(http, alice, title=f"r{i}", due_at="2026-01-01T00:00:00Z", recurrence="daily")
             for i in range(10)]

    def complete(args: tuple[str, int]) -> dict[str, Any]:
        task_id, n = args
        with httpx.Client(base_url=str(http.base_url), timeout=30) as own:
            if n % 2:
                response = own.patch(f"/api/tasks/{task_id}", json={"completed": True}, headers=alice.headers)
            else:
                response = own.put(f"/api/tasks/{task_id}", json={"completed": True}, headers=alice.headers)
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(complete, [(t["id"], n) for t in tasks for n in range(4)]))
    for task in tasks:
        seen = {r["next_task_id"] for r in results if r["id"] == task["id"]}
        assert len(seen) == 1 and None not in seen
    with psycopg.connect(database.admin_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM taskapi.tasks WHERE user_id = %s", [alice.id]).fetchone()[0]
    assert count == 20
