-- Row-level security for taskapi.idempotency_keys: each user's Idempotency-Keys and the responses they
-- produced (sql/migrations/0005_idempotency_keys.sql). Applied by `taskapi migrate` as taskapi_owner
-- after the migrations, every time, like tasks.sql.

ALTER TABLE taskapi.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE taskapi.idempotency_keys FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname FROM pg_catalog.pg_policies
             WHERE schemaname = 'taskapi' AND tablename = 'idempotency_keys'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON taskapi.idempotency_keys', p.policyname);
    END LOOP;
END
$$;

-- A user reads only their own keys (a retry's lookup); the auditor reads under the same rule.
CREATE POLICY idempotency_keys_select ON taskapi.idempotency_keys
    FOR SELECT TO taskapi_app, taskapi_auditor
    USING (user_id = (SELECT taskapi.current_user_id()));

-- A user records keys only as themselves.
CREATE POLICY idempotency_keys_insert ON taskapi.idempotency_keys
    FOR INSERT TO taskapi_app
    WITH CHECK (user_id = (SELECT taskapi.current_user_id()));

-- A user removes only their own keys, and only once they have expired: a key in its 24 hours cannot
-- be dropped to make a retry create the task a second time.
CREATE POLICY idempotency_keys_delete_expired ON taskapi.idempotency_keys
    FOR DELETE TO taskapi_app
    USING (user_id = (SELECT taskapi.current_user_id()) AND expires_at <= now());

-- No UPDATE: a recorded response is never changed, so the privilege is not granted and no policy is
-- needed. No TRUNCATE, REFERENCES or TRIGGER for anyone. `taskapi expire-keys` removes every user's
-- expired keys as taskapi_owner (api/idempotency.py says how, without a policy of its own).
REVOKE ALL ON taskapi.idempotency_keys FROM PUBLIC, taskapi_app, taskapi_auditor;
GRANT SELECT, INSERT, DELETE ON taskapi.idempotency_keys TO taskapi_app;
GRANT SELECT ON taskapi.idempotency_keys TO taskapi_auditor;
