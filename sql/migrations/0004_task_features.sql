-- Due dates, priority, tags and recurring tasks (issue #13); per-user counts kept with every write
-- (issue #11); the indexes behind every sort order and its keyset cursor (issues #11, #13).
-- Applied by `taskapi migrate` as taskapi_owner. Append-only: change these objects with a new file.
-- Row-level security, policies and grants of the new table live in sql/policies/task_counts.sql.

-- No write may slip between the back-fill of task_counts below and the triggers that keep it: with the
-- table locked against writers for this transaction, the counts start exact and stay exact.
LOCK TABLE taskapi.tasks IN SHARE ROW EXCLUSIVE MODE;

-- A task's tags: at most 20, each 1..50 characters with no surrounding white space, distinct when
-- compared case-insensitively. The API checks the same rules with friendlier messages (api/tasks.py);
-- this repeats them so that no row can break them, whoever writes it.
CREATE FUNCTION taskapi.tags_valid(tags text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT cardinality(tags) <= 20
       AND array_position(tags, NULL) IS NULL
       AND NOT EXISTS (SELECT 1 FROM unnest(tags) AS t
                       WHERE char_length(t) NOT BETWEEN 1 AND 50 OR t <> btrim(t, E' \t\n\r\f\x0b'))
       AND (SELECT count(DISTINCT lower(t)) FROM unnest(tags) AS t) = cardinality(tags)
$$;

COMMENT ON FUNCTION taskapi.tags_valid(text[]) IS
    'the tag rules of docs/CONTRACT.md section 2: at most 20, 1..50 characters, trimmed, distinct ignoring case';

-- Tags compare case-insensitively: the list's `tag` filter and /api/tags compare these keys (the
-- column tag_keys below keeps them for every task).
CREATE FUNCTION taskapi.tag_keys(tags text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(lower(t)), '{}') FROM unnest(tags) AS t
$$;

-- priority is stored as 1 (low), 2 (medium), 3 (high): sorting by priority is then sorting a number
-- (high first in the default descending order), and `priority = ANY(...)` is a leakproof comparison that
-- row-level security lets an index serve. recurrence needs a due date to advance.
ALTER TABLE taskapi.tasks
    ADD COLUMN due_at       timestamptz,
    ADD COLUMN priority     smallint NOT NULL DEFAULT 2,
    ADD COLUMN tags         text[]   NOT NULL DEFAULT '{}',
    ADD COLUMN recurrence   text,
    ADD COLUMN next_task_id uuid,
    -- The tags as the `tag` filter and /api/tags compare them, computed once per write, not per row
    -- read. Most tasks have no tags: those skip the function call (here and in tasks_tags_valid).
    ADD COLUMN tag_keys     text[]   NOT NULL
        GENERATED ALWAYS AS (CASE WHEN tags = '{}' THEN '{}' ELSE taskapi.tag_keys(tags) END) STORED,
    ADD CONSTRAINT tasks_due_at_finite CHECK (isfinite(due_at)),
    ADD CONSTRAINT tasks_priority_known CHECK (priority BETWEEN 1 AND 3),
    ADD CONSTRAINT tasks_tags_valid CHECK (tags = '{}' OR taskapi.tags_valid(tags)),
    ADD CONSTRAINT tasks_recurrence_known CHECK (recurrence IN ('daily', 'weekly', 'monthly')),
    ADD CONSTRAINT tasks_recurrence_needs_due_at CHECK (recurrence IS NULL OR due_at IS NOT NULL);

COMMENT ON COLUMN taskapi.tasks.priority IS '1 low, 2 medium, 3 high';
COMMENT ON COLUMN taskapi.tasks.next_task_id IS
    'the occurrence created when this recurring task was completed (set once, by tasks_spawn_next_occurrence)';

-- One index per sort order, each ending in id so that ties are broken the same way by the ORDER BY,
-- the keyset cursor's row comparison `(key, id) < (...)` and the index. Each serves both directions
-- (scanned backwards), except due_at: tasks without one come last in both orders, so ascending and
-- descending need the null placeholder at opposite ends. The placeholder is written as CASE, not
-- coalesce: row-level security lets an index serve only leakproof conditions, and the planner counts
-- CASE and IS NULL as leakproof but not COALESCE (api/listing.py writes the same expressions).
-- created_at has tasks_user_created_idx (0001).
CREATE INDEX tasks_user_updated_idx ON taskapi.tasks (user_id, updated_at, id);
CREATE INDEX tasks_user_due_asc_idx
    ON taskapi.tasks (user_id, (CASE WHEN due_at IS NULL THEN 'infinity'::timestamptz ELSE due_at END), id);
CREATE INDEX tasks_user_due_desc_idx
    ON taskapi.tasks (user_id, (CASE WHEN due_at IS NULL THEN '-infinity'::timestamptz ELSE due_at END), id);
CREATE INDEX tasks_user_priority_idx ON taskapi.tasks (user_id, priority, id);
CREATE INDEX tasks_user_title_idx ON taskapi.tasks (user_id, title, id);

-- Completing a recurring task creates its next occurrence in the same transaction, whichever statement
-- completes it (PUT, PATCH, toggle): same title, description, priority, tags and recurrence, due_at
-- advanced by the period in UTC (a month from Jan 31 is Feb 28 or 29: PostgreSQL clamps month ends),
-- not completed. The new id is kept in next_task_id, which is also what makes it happen once: a task
-- completed, un-completed and completed again, or completed by two requests at once (the second waits
-- for the first's row lock and then sees next_task_id set), spawns exactly one occurrence. Invoker's
-- rights: the insert passes the same policies as the caller's own inserts.
CREATE FUNCTION taskapi.spawn_next_occurrence() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO taskapi.tasks (user_id, title, description, priority, tags, recurrence, due_at)
    VALUES (NEW.user_id, NEW.title, NEW.description, NEW.priority, NEW.tags, NEW.recurrence,
            (NEW.due_at AT TIME ZONE 'UTC'
             + CASE NEW.recurrence WHEN 'daily' THEN interval '1 day'
                                   WHEN 'weekly' THEN interval '7 days'
                                   ELSE interval '1 month' END) AT TIME ZONE 'UTC')
    RETURNING id INTO NEW.next_task_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_spawn_next_occurrence
    BEFORE UPDATE OF completed ON taskapi.tasks
    FOR EACH ROW
    WHEN (NEW.completed AND NOT OLD.completed AND NEW.recurrence IS NOT NULL AND NEW.next_task_id IS NULL)
    EXECUTE FUNCTION taskapi.spawn_next_occurrence();

-- How many tasks each user has, and how many of them are completed: what the list's total_count reads
-- instead of counting the user's tasks (issue #11: a list request must not cost more for a user with
-- more tasks). Kept by the triggers below in the transaction of every write, under row-level security
-- like the tasks (sql/policies/task_counts.sql), so a user reads and moves only their own counts.
CREATE TABLE taskapi.task_counts (
    user_id   text   PRIMARY KEY DEFAULT taskapi.current_user_id(),
    total     bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    CONSTRAINT task_counts_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT task_counts_consistent CHECK (total >= 0 AND completed BETWEEN 0 AND total)
);

COMMENT ON TABLE taskapi.task_counts IS
    'per-user task counts kept by triggers on taskapi.tasks; row-level security: sql/policies/task_counts.sql';

INSERT INTO taskapi.task_counts (user_id, total, completed)
SELECT user_id, count(*), count(*) FILTER (WHERE completed)
FROM taskapi.tasks
GROUP BY user_id;

-- Inserts and deletes are counted once per statement, from its transition table: a bulk delete of a
-- user's completed tasks moves their counts once, not once per task. Concurrent writers of one user
-- queue on that user's row of task_counts (the upsert locks it), so no change is lost.
CREATE FUNCTION taskapi.count_inserted_tasks() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO taskapi.task_counts AS c (user_id, total, completed)
    SELECT user_id, count(*), count(*) FILTER (WHERE completed) FROM inserted GROUP BY user_id
    ON CONFLICT (user_id) DO UPDATE
        SET total = c.total + excluded.total, completed = c.completed + excluded.completed;
    RETURN NULL;
END
$$;

CREATE FUNCTION taskapi.count_deleted_tasks() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE taskapi.task_counts AS c
    SET total = c.total - d.total, completed = c.completed - d.completed
    FROM (SELECT user_id, count(*) AS total, count(*) FILTER (WHERE completed) AS completed
          FROM deleted GROUP BY user_id) AS d
    WHERE c.user_id = d.user_id;
    RETURN NULL;
END
$$;

-- An update moves the counts only when it changes completed (or, written by an administrator, the
-- owner); the WHEN clause keeps every other update from calling the function at all. Deltas go through
-- UPDATE, not an upsert: an upsert checks its proposed row (total 0, completed 1) against the table's
-- CHECK before it finds the existing row.
CREATE FUNCTION taskapi.count_updated_task() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.user_id = NEW.user_id THEN
        UPDATE taskapi.task_counts
        SET completed = completed + NEW.completed::int - OLD.completed::int
        WHERE user_id = NEW.user_id;
    ELSE
        UPDATE taskapi.task_counts
        SET total = total - 1, completed = completed - OLD.completed::int
        WHERE user_id = OLD.user_id;
        INSERT INTO taskapi.task_counts AS c (user_id, total, completed)
        VALUES (NEW.user_id, 1, NEW.completed::int)
        ON CONFLICT (user_id) DO UPDATE SET total = c.total + 1, completed = c.completed + excluded.completed;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_count_inserted
    AFTER INSERT ON taskapi.tasks REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION taskapi.count_inserted_tasks();

CREATE TRIGGER tasks_count_deleted
    AFTER DELETE ON taskapi.tasks REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION taskapi.count_deleted_tasks();

CREATE TRIGGER tasks_count_updated
    AFTER UPDATE OF completed, user_id ON taskapi.tasks
    FOR EACH ROW
    WHEN (OLD.completed IS DISTINCT FROM NEW.completed OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION taskapi.count_updated_task();

-- The strong validator of a task (issue #12): its updated_at in microseconds, which the
-- tasks_touch_updated_at trigger moves forward on every update. Quoted, as an HTTP entity tag.
CREATE FUNCTION taskapi.task_etag(t taskapi.tasks) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT '"' || to_hex((extract(epoch FROM t.updated_at) * 1000000)::bigint) || '"'
$$;

-- The task's JSON (docs/CONTRACT.md section 2), now with the fields of v1.2. Same signature, so the
-- grants and callers stay; invoker's rights and no SET clause, so the planner inlines it.
CREATE OR REPLACE FUNCTION taskapi.task_json(t taskapi.tasks) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT json_build_object(
        'id', t.id,
        'title', t.title,
        'description', t.description,
        'completed', t.completed,
        'user_id', t.user_id,
        'created_at', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'due_at', to_char(t.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'priority', CASE t.priority WHEN 3 THEN 'high' WHEN 1 THEN 'low' ELSE 'medium' END,
        'tags', t.tags,
        'recurrence', t.recurrence,
        'next_task_id', t.next_task_id)
$$;
