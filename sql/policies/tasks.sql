-- Row-level security for taskapi.tasks: the whole of who may see and change which task.
-- Every function call is schema-qualified, and migrate runs this with search_path pinned to
-- pg_catalog, pg_temp: nothing another role creates can stand in for what is named here.
-- Applied by `taskapi migrate` as taskapi_owner after the migrations, in one transaction, every time:
-- it first drops every policy on the table, so a policy added or edited by hand does not survive a
-- migrate, and it re-asserts RLS, the grants and the revokes. Safe to run any number of times.

ALTER TABLE taskapi.tasks ENABLE ROW LEVEL SECURITY;
-- FORCE: the table owner is subject to the policies too; without it the owner would read every row.
ALTER TABLE taskapi.tasks FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname FROM pg_catalog.pg_policies
             WHERE schemaname = 'taskapi' AND tablename = 'tasks'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON taskapi.tasks', p.policyname);
    END LOOP;
END
$$;

-- Every policy compares the row's owner with the caller's verified `sub`. The function is wrapped in
-- (select ...) so the planner evaluates it once per statement (an InitPlan), not once per row, and
-- the comparison can use tasks_user_created_idx.

-- A user reads only their own tasks. The auditor reads under the same rule, so impersonating a user
-- in psql (CONTRACT.md section 7) shows exactly that user's tasks.
CREATE POLICY tasks_select ON taskapi.tasks
    FOR SELECT TO taskapi_app, taskapi_auditor
    USING (user_id = (SELECT taskapi.current_user_id()));

-- A user creates tasks only as themselves.
CREATE POLICY tasks_insert ON taskapi.tasks
    FOR INSERT TO taskapi_app
    WITH CHECK (user_id = (SELECT taskapi.current_user_id()));

-- A user changes only their own tasks (USING), and cannot hand one to someone else (WITH CHECK).
CREATE POLICY tasks_update ON taskapi.tasks
    FOR UPDATE TO taskapi_app
    USING (user_id = (SELECT taskapi.current_user_id()))
    WITH CHECK (user_id = (SELECT taskapi.current_user_id()));

-- A user deletes only their own tasks.
CREATE POLICY tasks_delete ON taskapi.tasks
    FOR DELETE TO taskapi_app
    USING (user_id = (SELECT taskapi.current_user_id()));

-- taskapi.task_exists() runs as taskapi_owner and must see every id to tell 403 from 404. FORCE makes
-- the owner subject to RLS, so this policy, and only for SELECT, is what lets that function look.
-- taskapi_owner is NOLOGIN and owns the table (it could disable RLS outright), so this grants it
-- nothing it did not have; it grants no other role anything.
CREATE POLICY tasks_owner_task_exists ON taskapi.tasks
    FOR SELECT TO taskapi_owner
    USING (true);

-- Table privileges: exactly what each role needs, nothing by default. No TRUNCATE (it ignores RLS),
-- no REFERENCES, no TRIGGER.
REVOKE ALL ON taskapi.tasks FROM PUBLIC, taskapi_app, taskapi_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON taskapi.tasks TO taskapi_app;
GRANT SELECT ON taskapi.tasks TO taskapi_auditor;

-- Reaching the table: schema usage only (no CREATE), and the functions the policies and API call.
REVOKE ALL ON SCHEMA taskapi FROM PUBLIC, taskapi_app, taskapi_auditor;
GRANT USAGE ON SCHEMA taskapi TO taskapi_app, taskapi_auditor;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA taskapi FROM PUBLIC, taskapi_app, taskapi_auditor;
GRANT EXECUTE ON FUNCTION taskapi.current_user_id() TO taskapi_app, taskapi_auditor;
GRANT EXECUTE ON FUNCTION taskapi.task_json(taskapi.tasks) TO taskapi_app, taskapi_auditor;
GRANT EXECUTE ON FUNCTION taskapi.task_exists(uuid) TO taskapi_app;
-- A CHECK constraint's function runs with the rights of whoever writes the row.
GRANT EXECUTE ON FUNCTION taskapi.tags_valid(text[]) TO taskapi_app;
GRANT EXECUTE ON FUNCTION taskapi.tag_keys(text[]) TO taskapi_app, taskapi_auditor;
GRANT EXECUTE ON FUNCTION taskapi.task_etag(taskapi.tasks) TO taskapi_app, taskapi_auditor;
-- POST with an Idempotency-Key (sql/migrations/0005): invoker's rights, so it reaches the tasks and
-- taskapi.idempotency_keys only through their policies. Granted here, after the revoke above, which
-- sql/policies/idempotency_keys.sql (applied first) would not survive.
GRANT EXECUTE ON FUNCTION taskapi.create_task_once(text, text, text, text, boolean, timestamptz, smallint,
                                                   text[], text) TO taskapi_app;
