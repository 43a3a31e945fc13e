/**
 * The generated client against a live taskapi: what a frontend does in its first hour, each answer
 * held to the served document by the conformance middleware.
 *
 * Environment (./run sets it): TASKAPI_URL; TASKAPI_TOKEN_ALICE and TASKAPI_TOKEN_BOB, tokens of two
 * users no other run uses; TASKAPI_USER_ALICE, alice's user id (the `sub` of her token).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { TaskApiError, taskApi, type TaskApi } from "./client.js";
import { conformance, fetchDocument } from "./conformance.js";

const baseUrl = required("TASKAPI_URL");
const aliceId = required("TASKAPI_USER_ALICE");

let alice: TaskApi;
let bob: TaskApi;
let anonymous: TaskApi;
let checked: () => number;

before(async () => {
  const check = conformance(await fetchDocument(baseUrl));
  checked = check.checked;
  const middleware = [check.middleware];
  alice = taskApi({ baseUrl, token: required("TASKAPI_TOKEN_ALICE"), middleware });
  bob = taskApi({ baseUrl, token: required("TASKAPI_TOKEN_BOB"), middleware });
  anonymous = taskApi({ baseUrl, token: "not-a-token", middleware });
});

after(() => {
  // Every request below went through the document check; none slipped past it.
  assert.ok(checked() >= 30, `only ${checked()} answers were checked against the document`);
});

describe("a frontend's first hour", () => {
  test("create: 201 with the task, its Location and its ETag", async () => {
    const { task, location, etag } = await alice.create({
      title: "  Buy milk ",
      description: "2 litres",
      priority: "high",
      tags: ["groceries"],
      due_at: "2026-12-01T09:00:00+01:00",
    });
    assert.equal(task.title, "Buy milk");
    assert.equal(task.user_id, aliceId);
    assert.equal(task.completed, false);
    assert.equal(task.due_at, "2026-12-01T08:00:00.000000Z");
    assert.deepEqual(task.tags, ["groceries"]);
    assert.equal(location, `/api/tasks/${task.id}`);
    assert.match(etag, /^"[^"]+"$/);
  });

  test("list: my tasks, total_count, and a cursor to the next page", async () => {
    const first = await alice.create({ title: "Water plants" });
    const second = await alice.create({ title: "Call the plumber", priority: "low" });
    const page = await alice.list({ limit: 2 });
    assert.deepEqual(page.tasks.map((t) => t.id), [second.task.id, first.task.id]);
    assert.ok(page.total_count >= 3);
    assert.ok(page.next_cursor !== null);
    const next = await alice.list({ cursor: page.next_cursor, limit: 2 });
    assert.ok(next.tasks.every((t) => t.user_id === aliceId));
    const high = await alice.list({ priority: ["high"], sort: "due_at", order: "asc" });
    assert.ok(high.tasks.length >= 1 && high.tasks.every((t) => t.priority === "high"));
  });

  test("toggle flips completed, twice back", async () => {
    const { task } = await alice.create({ title: "Toggle me" });
    assert.equal((await alice.toggle(task.id)).completed, true);
    assert.equal((await alice.toggle(task.id)).completed, false);
    const done = await alice.list({ completed: "true" });
    assert.ok(done.tasks.every((t) => t.completed));
  });

  test("update changes the fields sent and keeps the others", async () => {
    const { task } = await alice.create({ title: "Draft", description: "keep me" });
    const changed = await alice.update(task.id, { title: "Final", tags: ["work"] });
    assert.equal(changed.title, "Final");
    assert.equal(changed.description, "keep me");
    assert.deepEqual(changed.tags, ["work"]);
    assert.equal((await alice.get(task.id)).title, "Final");
  });

  test("another user's task: 403 forbidden, and it stays out of their list", async () => {
    const { task } = await alice.create({ title: "Alice's secret" });
    const error = await rejection(bob.get(task.id));
    assert.equal(error.status, 403);
    assert.equal(error.body.error, "forbidden");
    assert.ok(!JSON.stringify(error.body).includes("Alice's secret"));
    await assertStatus(bob.toggle(task.id), 403, "forbidden");
    await assertStatus(bob.update(task.id, { title: "mine now" }), 403, "forbidden");
    await assertStatus(bob.remove(task.id), 403, "forbidden");
    assert.ok((await bob.list({ limit: 200 })).tasks.every((t) => t.id !== task.id));
    assert.equal((await alice.get(task.id)).title, "Alice's secret");
    // the /api/{user_id} paths: alice's id with bob's token is refused before any data is read
    const compat = await bob.client.GET("/api/{user_id}/tasks", { params: { path: { user_id: aliceId } } });
    assert.equal(compat.response.status, 403);
    assert.equal(compat.error?.error, "forbidden");
  });

  test("If-Match: a write with a stale ETag is 412 and changes nothing; with the current one it goes through", async () => {
    const { task, etag } = await alice.create({ title: "Edited in two tabs" });
    const first = await alice.client.PATCH("/api/tasks/{task_id}", {
      params: { path: { task_id: task.id }, header: { "If-Match": etag } },
      body: { title: "Tab one wins" },
    });
    assert.equal(first.response.status, 200);
    const current = first.response.headers.get("ETag");
    assert.ok(current !== null && current !== etag);
    const stale = await rejection(alice.update(task.id, { title: "Tab two loses" }, { ifMatch: etag }));
    assert.equal(stale.status, 412);
    assert.equal(stale.body.error, "precondition_failed");
    assert.equal(stale.response.headers.get("ETag"), current);
    assert.equal((await alice.get(task.id)).title, "Tab one wins");
    assert.equal((await alice.toggle(task.id, { ifMatch: current })).completed, true);
  });

  test("If-None-Match: 304 without a body while the task and the list are unchanged", async () => {
    const { task } = await alice.create({ title: "Cached" });
    const read = await alice.client.GET("/api/tasks/{task_id}", { params: { path: { task_id: task.id } } });
    const etag = read.response.headers.get("ETag");
    assert.ok(etag !== null);
    const again = await alice.client.GET("/api/tasks/{task_id}", {
      params: { path: { task_id: task.id }, header: { "If-None-Match": etag } },
    });
    assert.equal(again.response.status, 304);
    const list = await alice.client.GET("/api/tasks", { params: { query: { limit: 5 } } });
    const listTag = list.response.headers.get("ETag");
    assert.ok(listTag !== null);
    const cached = await alice.client.GET("/api/tasks", {
      params: { query: { limit: 5 }, header: { "If-None-Match": listTag } },
    });
    assert.equal(cached.response.status, 304);
  });

  test("Idempotency-Key: a retried create answers the first 201 again; another body with the key is 422", async () => {
    const key = `ts-${uniqueSuffix()}`;
    const first = await alice.create({ title: "Pay rent" }, { idempotencyKey: key });
    const retry = await alice.create({ title: "Pay rent" }, { idempotencyKey: key });
    assert.equal(retry.task.id, first.task.id);
    const reused = await rejection(alice.create({ title: "Something else" }, { idempotencyKey: key }));
    assert.equal(reused.status, 422);
    assert.equal(reused.body.error, "idempotency_key_reused");
  });

  test("a task that does not exist: 404 not_found", async () => {
    await assertStatus(alice.get("00000000-0000-4000-8000-000000000000"), 404, "not_found");
  });

  test("validation: 400 naming the field in the API's words", async () => {
    const error = await rejection(alice.create({ title: "   " }));
    assert.equal(error.status, 400);
    assert.equal(error.body.error, "validation_error");
    assert.deepEqual(error.body.details?.map((d) => d.field), ["title"]);
    const wrong = await rejection(alice.update(fakeId(), { recurrence: "weekly", due_at: null }));
    assert.equal(wrong.status, 400);
  });

  test("no valid token: 401 with WWW-Authenticate", async () => {
    const error = await rejection(anonymous.list());
    assert.equal(error.status, 401);
    assert.equal(error.body.error, "unauthorized");
    assert.match(error.response.headers.get("WWW-Authenticate") ?? "", /^Bearer/);
  });

  test("tags, delete, and clearing completed tasks", async () => {
    const { task } = await alice.create({ title: "Done soon", tags: ["Errands"], completed: true });
    assert.ok((await alice.tags()).tags.some((t) => t.tag.toLowerCase() === "errands"));
    assert.ok((await alice.clearCompleted()) >= 1);
    await assertStatus(alice.get(task.id), 404, "not_found");
    const { task: other } = await alice.create({ title: "Delete me" });
    await alice.remove(other.id);
    await assertStatus(alice.get(other.id), 404, "not_found");
  });
});

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (clients/typescript/run sets it)`);
  return value;
}

function uniqueSuffix(): string {
  return Math.random().toString(36).slice(2);
}

function fakeId(): string {
  return "11111111-1111-4111-8111-111111111111";
}

async function rejection(promise: Promise<unknown>): Promise<TaskApiError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof TaskApiError) return error;
    throw error;
  }
  assert.fail("the request succeeded");
}

async function assertStatus(promise: Promise<unknown>, status: number, code: string): Promise<void> {
  const error = await rejection(promise);
  assert.equal(error.status, status);
  assert.equal(error.body.error, code);
}
