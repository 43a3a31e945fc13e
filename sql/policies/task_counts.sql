-- Row-level security for taskapi.task_counts: each user's task counts, kept by the triggers on
-- taskapi.tasks (sql/migrations/0004_task_features.sql), which run with the rights of whoever wrote the
-- tasks. Applied by `taskapi migrate` as taskapi_owner after the migrations, every time, like tasks.sql.

ALTER TABLE taskapi.task_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE taskapi.task_counts FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname FROM pg_catalog.pg_policies
             WHERE schemaname = 'taskapi' AND tablename = 'task_counts'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON taskapi.task_counts', p.policyname);
    END LOOP;
END
$$;

-- A user reads only their own counts (the list's total_count); the auditor reads under the same rule.
CREATE POLICY task_counts_select ON taskapi.task_counts
    FOR SELECT TO taskapi_app, taskapi_auditor
    USING (user_id = (SELECT taskapi.current_user_id()));

-- The triggers create a user's row with their first task, and move only that user's row.
CREATE POLICY task_counts_insert ON taskapi.task_counts
    FOR INSERT TO taskapi_app
    WITH CHECK (user_id = (SELECT taskapi.current_user_id()));

CREATE POLICY task_counts_update ON taskapi.task_counts
    FOR UPDATE TO taskapi_app
    USING (user_id = (SELECT taskapi.current_user_id()))
    WITH CHECK (user_id = (SELECT taskapi.current_user_id()));

-- No DELETE: nobody removes a row of counts (a user with no tasks has zeros), so the privilege is not
-- granted and no policy is needed. No TRUNCATE, REFERENCES or TRIGGER for anyone.
REVOKE ALL ON taskapi.task_counts FROM PUBLIC, taskapi_app, taskapi_auditor;
GRANT SELECT, INSERT, UPDATE ON taskapi.task_counts TO taskapi_app;
GRANT SELECT ON taskapi.task_counts TO taskapi_auditor;
