/**
 * A small typed taskapi client: openapi-fetch over the types openapi-typescript generates from the
 * served document (`npm run generate` writes src/generated/schema.d.ts).
 *
 * Every method returns the success body, typed from the document, or throws a TaskApiError carrying
 * the status and the `{error, message, details?}` body. `client` is the openapi-fetch client itself,
 * for any call the wrapper does not cover.
 */
import createClient, { type Middleware } from "openapi-fetch";

import type { components, paths } from "./generated/schema.js";

export type Task = components["schemas"]["Task"];
export type TaskList = components["schemas"]["TaskList"];
export type TagList = components["schemas"]["TagList"];
export type ErrorBody = components["schemas"]["ErrorBody"];
export type TaskCreate = NonNullable<paths["/api/tasks"]["post"]["requestBody"]>["content"]["application/json"];
export type TaskChange = NonNullable<paths["/api/tasks/{task_id}"]["patch"]["requestBody"]>["content"]["application/json"];
export type ListQuery = NonNullable<paths["/api/tasks"]["get"]["parameters"]["query"]>;

/** A non-2xx answer: its status and the API's error body. */
export class TaskApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
    readonly response: Response,
  ) {
    super(`${status} ${body.error}: ${body.message}`);
    this.name = "TaskApiError";
  }
}

export interface TaskApiOptions {
  /** e.g. http://127.0.0.1:8000 */
  baseUrl: string;
  /** a JWT whose `sub` is the user id (Better Auth's jwt plugin, or `taskapi token`) */
  token: string;
  /** openapi-fetch middleware, e.g. the document check of conformance.ts */
  middleware?: Middleware[];
}

/** Options of a write: `ifMatch` makes it conditional on the task's version (else 412, nothing changes). */
export interface WriteOptions {
  ifMatch?: string;
}

/** A created task with the two headers that come with it. */
export interface Created {
  task: Task;
  /** `/api/tasks/{id}` */
  location: string;
  /** the task's version, for If-Match */
  etag: string;
}

export function taskApi({ baseUrl, token, middleware = [] }: TaskApiOptions) {
  const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
  for (const item of middleware) client.use(item);
  const path = (id: string) => ({ params: { path: { task_id: id } } });
  const conditional = (id: string, { ifMatch }: WriteOptions) => ({
    params: { path: { task_id: id }, ...(ifMatch === undefined ? {} : { header: { "If-Match": ifMatch } }) },
  });

  return {
    client,

    /** One page of my tasks; `next_cursor` continues the same query. */
    async list(query: ListQuery = {}): Promise<TaskList> {
      return body(await client.GET("/api/tasks", { params: { query } }));
    },

    /** `idempotencyKey`: a retry with the same key and body answers the first 201 again, creating nothing. */
    async create(task: TaskCreate, { idempotencyKey }: { idempotencyKey?: string } = {}): Promise<Created> {
      const params = idempotencyKey === undefined ? {} : { header: { "Idempotency-Key": idempotencyKey } };
      const result = await client.POST("/api/tasks", { body: task, params });
      return {
        task: body(result),
        location: header(result.response, "Location"),
        etag: header(result.response, "ETag"),
      };
    },

    async get(id: string): Promise<Task> {
      return body(await client.GET("/api/tasks/{task_id}", path(id)));
    },

    /** Changes the fields sent, leaves the others. */
    async update(id: string, change: TaskChange, options: WriteOptions = {}): Promise<Task> {
      return body(await client.PATCH("/api/tasks/{task_id}", { ...conditional(id, options), body: change }));
    },

    /** Flips `completed` in one statement on the server. */
    async toggle(id: string, options: WriteOptions = {}): Promise<Task> {
      return body(await client.PATCH("/api/tasks/{task_id}/toggle", conditional(id, options)));
    },

    async remove(id: string, options: WriteOptions = {}): Promise<void> {
      body(await client.DELETE("/api/tasks/{task_id}", conditional(id, options)));
    },

    /** Deletes my completed tasks; how many. */
    async clearCompleted(): Promise<number> {
      return body(await client.DELETE("/api/tasks", { params: { query: { completed: "true" } } })).deleted;
    },

    async tags(): Promise<TagList> {
      return body(await client.GET("/api/tags", {}));
    },
  };
}

export type TaskApi = ReturnType<typeof taskApi>;

function body<T>(result: { data?: T; error?: ErrorBody; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    const error = result.error ?? { error: "unexpected_response", message: `no body with ${result.response.status}` };
    throw new TaskApiError(result.response.status, error, result.response);
  }
  return result.data;
}

function header(response: Response, name: string): string {
  const value = response.headers.get(name);
  if (value === null) throw new Error(`${response.status} without ${name}`);
  return value;
}
