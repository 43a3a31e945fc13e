"""GET /api/tasks (issues #11, #12, #13): filters, sort orders, keyset cursors, counts, list ETags; bulk clear; tags.

Expected orders are asked of PostgreSQL itself (as the admin, with an explicit WHERE), so that a sort by
title follows the database's collation, not Python's.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from test_tasks_http import assert_error, assert_validation, create

from conftest import Database, User, make_user

SORT_SQL = {
    ("created_at", "desc"): "created_at DESC, id DESC",
    ("created_at", "asc"): "created_at ASC, id ASC",
    ("updated_at", "desc"): "updated_at DESC, id DESC",
    ("updated_at", "asc"): "updated_at ASC, id ASC",
    ("due_at", "desc"): "due_at DESC NULLS LAST, id DESC",
    ("due_at", "asc"): "due_at ASC NULLS LAST, id ASC",
    ("priority", "desc"): "priority DESC, id DESC",
    ("priority", "asc"): "priority ASC, id ASC",
    ("title", "desc"): "title DESC, id DESC",
    ("title", "asc"): "title ASC, id ASC",
}


def page(http: httpx.Client, user: User, **params: Any) -> dict[str, Any]:
    response = http.get("/api/tasks", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"tasks", "total_count", "next_cursor"}
    return body


def walk(http: httpx.Client, user: User, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of a query, following next_cursor (and checking the Link header says the same)."""
    response = http.get("/api/tasks", params=params, headers=user.headers)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        yield body
        if body["next_cursor"] is None:
            assert "link" not in response.headers
            return
        link = response.headers["link"]
        assert link.startswith("</api/tasks?cursor=" + body["next_cursor"]) and link.endswith('>; rel="next"')
        response = http.get(link[1:link.index(">")], headers=user.headers)


def expected_ids(database: Database, user: User, order: str, where: str = "true") -> list[str]:
    with psycopg.connect(database.admin_dsn) as conn:
        rows = conn.execute(f"SELECT id::text FROM taskapi.tasks WHERE user_id = %s AND {where} ORDER BY {order}",
                            [user.id]).fetchall()
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def varied(http: httpx.Client) -> User:
    """A user with 40 tasks: ties in priority, title and due_at, some without a due_at, some completed."""
    user = make_user("varied")
    for i in range(40):
        body: dict[str, Any] = {"title": f"task {i % 7}", "priority": ("high", "medium", "low")[i % 3],
                                "completed": i % 4 == 0, "tags": [f"t{i % 3}"]}
        if i % 5:
            body["due_at"] = f"2031-0{1 + i % 3}-1{i % 2}T09:00:00+02:00"
        create(http, user, **body)
    return user


# --- sort orders and cursors ---------------------------------------------------------------------------

@pytest.mark.parametrize(("sort", "order"), list(SORT_SQL))
def test_every_sort_order_pages_through_every_task_once_in_order(http, database, varied, sort, order):
    pages = list(walk(http, varied, sort=sort, order=order, limit=6))
    ids = [t["id"] for p in pages for t in p["tasks"]]
    assert ids == expected_ids(database, varied, SORT_SQL[(sort, order)])
    assert len(pages) == 7 and all(p["total_count"] == 40 for p in pages)


@pytest.mark.parametrize(("sort", "order"), list(SORT_SQL))
def test_offset_pages_are_slices_of_the_sort_order_with_every_task_whole(http, database, varied, sort, order):
    # The statement builds no JSON for the rows OFFSET skips (a CASE on the row number): a task on the
    # page must still be the whole task, and the page the right slice.
    full = page(http, varied, sort=sort, order=order, limit=200)["tasks"]
    for offset in (1, 17, 39):
        body = page(http, varied, sort=sort, order=order, limit=5, offset=offset)
        assert body["tasks"] == full[offset:offset + 5]
        assert body["total_count"] == 40

def test_default_order_is_newest_first_and_due_at_less_tasks_come_last_both_ways(http, database, varied):
    assert [t["id"] for t in page(http, varied, limit=200)["tasks"]] == expected_ids(
        database, varied, SORT_SQL[("created_at", "desc")])
    for order in ("asc", "desc"):
        tasks = page(http, varied, sort="due_at", order=order, limit=200)["tasks"]
        dues = [t["due_at"] for t in tasks]
        assert None not in dues[:32] and dues[32:] == [None] * 8


def test_cursor_walk_sees_every_task_once_while_others_are_created_and_deleted(http, database):
    user = make_user("walker")
    ids = [create(http, user, title=f"w{i}")["id"] for i in range(60)]
    doomed = set(random.Random(7).sample(ids[:50], 15))
    seen: list[str] = []
    created: list[str] = []
    pages = walk(http, user, limit=4)
    seen += [t["id"] for t in next(pages)["tasks"]]
    stop = threading.Event()

    def churn() -> None:
        for task_id in doomed:
            assert http.delete(f"/api/tasks/{task_id}", headers=user.headers).status_code == 200
            created.append(create(http, user, title="newcomer")["id"])
        stop.set()

    worker = threading.Thread(target=churn)
    worker.start()
    for body in pages:
        seen += [t["id"] for t in body["tasks"]]
    worker.join()
    assert stop.is_set()
    assert len(seen) == len(set(seen)), "a task was listed twice"
    # Every task that lived through the walk is there, in order; the newer ones are behind the cursor.
    survivors = [i for i in reversed(ids) if i not in doomed]
    assert [i for i in seen if i not in doomed] == survivors
    assert not set(created) & set(seen[4:])


def test_a_cursor_continues_the_same_query_and_other_queries_are_refused(http, varied):
    first = page(http, varied, priority="high", sort="title", order="asc", limit=3)
    cursor = first["next_cursor"]
    same = page(http, varied, cursor=cursor, limit=3)
    repeated = page(http, varied, cursor=cursor, priority="high", sort="title", order="asc", limit=3)
    assert same == repeated and all(t["priority"] == "high" for t in same["tasks"])
    assert not {t["id"] for t in first["tasks"]} & {t["id"] for t in same["tasks"]}
    for other in ({"priority": "low"}, {"sort": "due_at"}, {"order": "desc"}, {"completed": "true"}, {"q": "task"}):
        assert_validation(http.get("/api/tasks", params={"cursor": cursor, **other}, headers=varied.headers),
                          "cursor")
    assert_validation(http.get("/api/tasks", params={"cursor": cursor, "offset": 0}, headers=varied.headers),
                      "cursor")


def test_a_tampered_cursor_is_400(http, varied):
    cursor = page(http, varied, limit=2)["next_cursor"]
    payload, _, check = cursor.partition(".")
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    for bad in (flipped + "." + check, payload + "." + check[:-1] + ("A" if check[-1] != "A" else "B"),
                cursor[:-5], cursor + "x", payload, "." + check, "", "not a cursor", "é" * 30, "%00",
                cursor.replace(".", "..")):
        assert_validation(http.get("/api/tasks", params={"cursor": bad}, headers=varied.headers), "cursor")


def test_another_users_cursor_shows_only_your_own_tasks(http, varied):
    cursor = page(http, varied, limit=2)["next_cursor"]
    stranger = make_user("stranger")
    mine = create(http, stranger, title="mine")
    body = page(http, stranger, cursor=cursor)
    assert all(t["user_id"] == stranger.id for t in body["tasks"])
    # The cursor points into varied's timeline; the stranger's only task is newer, so it is behind it.
    assert body["tasks"] == [] and body["total_count"] == 1
    assert page(http, stranger, cursor=cursor, order="desc")["tasks"] == []
    assert page(http, stranger)["tasks"] == [mine]


def test_offset_is_capped_and_cursor_is_the_way_to_go_deep(http, alice):
    assert page(http, alice, offset=10_000)["tasks"] == []
    assert_validation(http.get("/api/tasks", params={"offset": 10_001}, headers=alice.headers), "offset")


@pytest.mark.parametrize(("params", "field"), [
    ({"sort": "name"}, "sort"), ({"sort": ""}, "sort"), ({"order": "up"}, "order"),
    ({"due_before": "2026-13-01T00:00:00Z"}, "due_before"), ({"due_before": "2026-12-01"}, "due_before"),
    ({"due_after": "2026-12-01T10:00:00"}, "due_after"), ({"due_after": "0999-12-01T10:00:00Z"}, "due_after"),
    ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "x" * 201}, "q"), ({"q": " ".join("w" * 21)}, "q"),
    ({"priority": "urgent"}, "priority"), ({"priority": ""}, "priority"), ({"tag": ""}, "tag"),
    ({"tag": "x" * 51}, "tag"), ({"overdue": "yes"}, "overdue"), ({"completed": "True"}, "completed"),
    ({"limit": "1e2"}, "limit"), ({"limit": "٣"}, "limit"), ({"sort": ["title", "title"]}, "sort"),
])
def test_bad_query_parameters_are_400_naming_them(http, alice, params, field):
    assert_validation(http.get("/api/tasks", params=params, headers=alice.headers), field)


# --- filters -------------------------------------------------------------------------------------------

def test_search_wants_every_word_in_the_title_or_description_ignoring_case(http):
    user = make_user("searcher")
    milk = create(http, user, title="Buy MILK", description="and some Bread")
    create(http, user, title="buy bread")
    pct = create(http, user, title="50% off_sale", description="back\\slash")
    assert [t["id"] for t in page(http, user, q="milk bread")["tasks"]] == [milk["id"]]
    assert [t["id"] for t in page(http, user, q="  mil  BRE ")["tasks"]] == [milk["id"]]
    assert page(http, user, q="bread")["total_count"] == 2
    assert [t["id"] for t in page(http, user, q="50%")["tasks"]] == [pct["id"]]
    assert [t["id"] for t in page(http, user, q="f_s back\\s")["tasks"]] == [pct["id"]]
    assert page(http, user, q="0_")["tasks"] == []
    assert page(http, user, q="%")["total_count"] == 1  # a literal %, not a wildcard
    assert page(http, user, q="_")["total_count"] == 1  # a literal _, not a wildcard
    assert page(http, user, q="milk nothing")["total_count"] == 0


def test_filters_combine_and_total_count_counts_what_matches(http, database, varied):
    cases = [
        ({"priority": ["high", "low"]}, "priority IN (3, 1)"),
        ({"priority": "medium", "completed": "false"}, "priority = 2 AND NOT completed"),
        ({"tag": "T1"}, "'t1' = ANY(tags)"),
        ({"tag": ["t1", "t2"]}, "false"),
        ({"due_before": "2031-02-10T07:00:00Z"}, "due_at < '2031-02-10T07:00:00Z'"),
        ({"due_after": "2031-02-10T07:00:00Z", "due_before": "2031-03-11T07:00:01Z"},
         "due_at > '2031-02-10T07:00:00Z' AND due_at < '2031-03-11T07:00:01Z'"),
        ({"overdue": "false"}, "NOT (coalesce(due_at < now(), false) AND NOT completed)"),
        ({"q": "task 3", "sort": "due_at", "order": "asc"}, "title ILIKE '%%task%%' AND title ILIKE '%%3%%'"),
        ({"completed": "true", "sort": "priority"}, "completed"),
    ]
    for params, where in cases:
        body = page(http, varied, limit=200, **params)
        order = SORT_SQL[(params.get("sort", "created_at"), params.get("order", "desc"))]
        assert [t["id"] for t in body["tasks"]] == expected_ids(database, varied, order, where), params
        assert body["total_count"] == len(body["tasks"]), params


def test_overdue_means_due_in_the_past_and_not_completed(http):
    user = make_user("late")
    late = create(http, user, title="late", due_at="2020-01-01T00:00:00Z")
    create(http, user, title="late but done", due_at="2020-01-01T00:00:00Z", completed=True)
    create(http, user, title="future", due_at="2999-01-01T00:00:00Z")
    create(http, user, title="no due date")
    assert [t["id"] for t in page(http, user, overdue="true")["tasks"]] == [late["id"]]
    assert page(http, user, overdue="false")["total_count"] == 3


def test_search_tags_and_filters_never_show_another_users_tasks(http):
    alice, bob = make_user("alice"), make_user("bob")
    create(http, alice, title="secret milk", tags=["Shared"], priority="high", due_at="2020-01-01T00:00:00Z")
    create(http, bob, title="bread", tags=["other"])
    for params in ({"q": "milk"}, {"tag": "shared"}, {"priority": "high"}, {"overdue": "true"},
                   {"due_before": "2021-01-01T00:00:00Z"}, {"sort": "title"}):
        body = page(http, bob, **params)
        assert all(t["user_id"] == bob.id for t in body["tasks"]), params
        assert "milk" not in str(body)
    assert http.get("/api/tags", headers=bob.headers).json() == {"tags": [{"tag": "other", "count": 1}]}


# --- counts --------------------------------------------------------------------------------------------

def test_counts_stay_equal_to_the_tasks_under_a_concurrent_random_workload(http, database):
    users = [make_user("counted") for _ in range(3)]
    owned: dict[str, list[str]] = {u.id: [create(http, u, title="seed")["id"] for _ in range(5)] for u in users}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=str(http.base_url), timeout=30) as own:
            for _ in range(40):
                user = rng.choice(users)
                with lock:
                    mine = list(owned[user.id])
                action = rng.random()
                if action < 0.35 or not mine:
                    body = {"title": "new", "completed": rng.random() < 0.3}
                    if rng.random() < 0.3:
                        body.update(due_at="2030-01-31T10:00:00Z", recurrence="monthly")
                    response = own.post("/api/tasks", json=body, headers=user.headers)
                    assert response.status_code == 201, response.text
                    with lock:
                        owned[user.id].append(response.json()["id"])
                elif action < 0.7:
                    response = own.patch(f"/api/tasks/{rng.choice(mine)}/toggle", headers=user.headers)
                    assert response.status_code in (200, 404), response.text
                    if response.status_code == 200 and response.json()["next_task_id"]:
                        with lock:
                            owned[user.id].append(response.json()["next_task_id"])
                elif action < 0.9:
                    response = own.delete(f"/api/tasks/{rng.choice(mine)}", headers=user.headers)
                    assert response.status_code in (200, 404), response.text
                else:
                    response = own.delete("/api/tasks", params={"completed": "true"}, headers=user.headers)
                    assert response.status_code == 200, response.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    with psycopg.connect(database.admin_dsn) as conn:
        rows = conn.execute("""
            SELECT u.id, coalesce(c.total, 0), coalesce(c.completed, 0),
                   (SELECT count(*) FROM taskapi.tasks t WHERE t.user_id = u.id),
                   (SELECT count(*) FROM taskapi.tasks t WHERE t.user_id = u.id AND t.completed)
            FROM unnest(%s::text[]) AS u(id) LEFT JOIN taskapi.task_counts c ON c.user_id = u.id
        """, [[u.id for u in users]]).fetchall()
    for user_id, total, completed, real_total, real_completed in rows:
        assert (total, completed) == (real_total, real_completed), user_id
    for user in users:
        assert page(http, user)["total_count"] == next(r[3] for r in rows if r[0] == user.id)


def test_an_unfiltered_count_reads_the_counts_not_the_tasks(http, database, alice):
    create(http, alice, title="one")
    create(http, alice, title="two", completed=True)
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE taskapi.task_counts SET total = 42, completed = 40 WHERE user_id = %s", [alice.id])
    try:
        assert page(http, alice)["total_count"] == 42
        assert page(http, alice, completed="true")["total_count"] == 40
        assert page(http, alice, completed="false")["total_count"] == 2
        assert page(http, alice, q="one")["total_count"] == 1  # a search counts the matches
    finally:
        with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
            conn.execute("UPDATE taskapi.task_counts SET total = 2, completed = 1 WHERE user_id = %s", [alice.id])


# --- list ETags ----------------------------------------------------------------------------------------

def test_the_list_etag_changes_with_the_page_and_the_count(http, alice):
    tasks = [create(http, alice, title=f"e{i}") for i in range(3)]
    first = http.get("/api/tasks", params={"limit": 2}, headers=alice.headers)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    unchanged = http.get("/api/tasks", params={"limit": 2}, headers={**alice.headers, "If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
    weak = http.get("/api/tasks", params={"limit": 2}, headers={**alice.headers, "If-None-Match": f'"x", W/{etag}'})
    assert weak.status_code == 304
    assert http.patch(f"/api/tasks/{tasks[2]['id']}/toggle", headers=alice.headers).status_code == 200
    toggled = http.get("/api/tasks", params={"limit": 2}, headers={**alice.headers, "If-None-Match": etag})
    assert toggled.status_code == 200 and toggled.headers["etag"] != etag
    etag = toggled.headers["etag"]
    # A change off the page that moves total_count changes the tag too.
    assert http.delete(f"/api/tasks/{tasks[0]['id']}", headers=alice.headers).status_code == 200
    recounted = http.get("/api/tasks", params={"limit": 2}, headers={**alice.headers, "If-None-Match": etag})
    assert recounted.status_code == 200 and recounted.json()["total_count"] == 2
    stale = http.get("/api/tasks", params={"limit": 2}, headers={**alice.headers, "If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json()["tasks"]


# --- bulk clear and tags -------------------------------------------------------------------------------

def test_clearing_completed_tasks_deletes_only_the_callers_completed_ones(http, database):
    alice, bob = make_user("alice"), make_user("bob")
    keep = create(http, alice, title="todo")
    for user in (alice, bob):
        create(http, user, title="done 1", completed=True)
        create(http, user, title="done 2", completed=True)
    response = http.delete("/api/tasks", params={"completed": "true"}, headers=alice.headers)
    assert response.status_code == 200 and response.json() == {"deleted": 2}
    assert page(http, alice) == {"tasks": [keep], "total_count": 1, "next_cursor": None}
    assert page(http, bob)["total_count"] == 2 and page(http, bob, completed="true")["total_count"] == 2
    again = http.delete(f"/api/{alice.id}/tasks", params={"completed": "true"}, headers=alice.headers)
    assert again.json() == {"deleted": 0}


@pytest.mark.parametrize("params", [{}, {"completed": "false"}, {"completed": ["true", "true"]},
                                    {"completed": "true", "q": "x"}, {"completed": "true", "limit": 5}])
def test_bulk_delete_accepts_only_completed_true(http, alice, params):
    create(http, alice, title="survivor", completed=True)
    response = http.delete("/api/tasks", params=params, headers=alice.headers)
    assert_error(response, 400, "validation_error")
    assert page(http, alice, completed="true")["total_count"] >= 1


def test_tags_are_counted_ignoring_case_and_spelled_as_first_written(http):
    user = make_user("tagger")
    create(http, user, title="a", tags=["Groceries", "home"])
    create(http, user, title="b", tags=["groceries"])
    create(http, user, title="c", tags=["HOME", "Work"])
    create(http, user, title="d", tags=["GROCERIES"])
    assert http.get("/api/tags", headers=user.headers).json() == {"tags": [
        {"tag": "Groceries", "count": 3}, {"tag": "home", "count": 2}, {"tag": "Work", "count": 1}]}
    assert http.get(f"/api/{user.id}/tags", headers=user.headers).status_code == 200
    assert_error(http.get(f"/api/{uuid.uuid4()}/tags", headers=user.headers), 403, "forbidden")
