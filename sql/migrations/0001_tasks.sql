-- The tasks schema: table, identity function, existence function, updated_at trigger.
-- Applied by `taskapi migrate` as taskapi_owner. Append-only: yoyo records a hash of this file's
-- *name*, so an edit to an applied migration would go unnoticed. Change the schema with a new file.
-- Row-level security, policies and grants live in sql/policies/tasks.sql, re-applied on every migrate.

CREATE SCHEMA taskapi;

-- The caller's user id: the `sub` of the verified claims the API sets per transaction with
-- set_config('request.jwt.claims', ..., true). NULL when the setting is unset, '' (as it reads on a
-- pooled connection after an earlier transaction set it), or carries no usable `sub`: then every
-- policy compares user_id with NULL, and the caller sees and changes nothing.
CREATE FUNCTION taskapi.current_user_id() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub', '')
$$;

COMMENT ON FUNCTION taskapi.current_user_id() IS
    'sub of the transaction''s verified JWT claims (setting request.jwt.claims); NULL when unset';

-- Every limit of CONTRACT.md section 2 is repeated here, so a row that breaks one cannot exist
-- whoever writes it. The API strips titles with Python's str.strip(), which removes a superset of
-- the ASCII white space checked below.
CREATE TABLE taskapi.tasks (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text        NOT NULL DEFAULT taskapi.current_user_id(),
    title       text        NOT NULL,
    description text,
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT tasks_title_length CHECK (char_length(title) BETWEEN 1 AND 255),
    CONSTRAINT tasks_title_trimmed CHECK (title = btrim(title, E' \t\n\r\f\x0b')),
    CONSTRAINT tasks_description_length CHECK (char_length(description) BETWEEN 1 AND 1000),
    CONSTRAINT tasks_description_not_blank CHECK (btrim(description, E' \t\n\r\f\x0b') <> '')
);

COMMENT ON TABLE taskapi.tasks IS 'personal tasks; row-level security: see sql/policies/tasks.sql';

-- Serves "my tasks, newest first" (the policy's user_id = ... plus ORDER BY created_at DESC, id DESC)
-- and its count; `completed` is carried in the index so the filtered list and count need no heap
-- visit when the visibility map allows an index-only scan.
CREATE INDEX tasks_user_created_idx
    ON taskapi.tasks (user_id, created_at DESC, id DESC) INCLUDE (completed);

-- updated_at changes on every update, and strictly increases even when two updates fall in the
-- same microsecond of now().
CREATE FUNCTION taskapi.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := greatest(now(), OLD.updated_at + interval '1 microsecond');
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_touch_updated_at
    BEFORE UPDATE ON taskapi.tasks
    FOR EACH ROW EXECUTE FUNCTION taskapi.touch_updated_at();

-- The one deliberate look past row-level security (CONTRACT.md section 6): whether a task id exists
-- at all, so the API can answer 403 (someone else's task) rather than 404 (no such task). It returns
-- a boolean and no row data. It runs as taskapi_owner, which reads tasks through the
-- tasks_owner_task_exists policy (sql/policies/tasks.sql); search_path is pinned so no object a
-- caller creates can stand in for the ones named here.
CREATE FUNCTION taskapi.task_exists(task_id uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM taskapi.tasks WHERE id = task_id)
$$;

COMMENT ON FUNCTION taskapi.task_exists(uuid) IS
    'true when a task with this id exists, whoever owns it; no row data (403 vs 404)';

-- The JSON the API returns for a task (CONTRACT.md section 2), built here so a response body goes
-- from PostgreSQL to the client without being decoded and re-encoded in Python. Timestamps are
-- RFC 3339 in UTC with microseconds. Invoker's rights and no SET clause, so the planner inlines it.
CREATE FUNCTION taskapi.task_json(t taskapi.tasks) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT json_build_object(
        'id', t.id,
        'title', t.title,
        'description', t.description,
        'completed', t.completed,
        'user_id', t.user_id,
        'created_at', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;
