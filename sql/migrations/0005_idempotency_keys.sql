-- Idempotency-Key on POST /api/tasks (issue #12, docs/CONTRACT.md section 9): the 201 a key produced,
-- kept for 24 hours per user, so that a retried create returns the original task instead of a second
-- one, also when the first response never reached the client.
-- Applied by `taskapi migrate` as taskapi_owner. Append-only: change these objects with a new file.
-- Row-level security, policies and grants of the new table live in sql/policies/idempotency_keys.sql.

-- One row per (user, key): the response it produced, byte for byte, and a fingerprint of the request,
-- so a retry with another body is told apart (422). A key counts as absent once it has expired; each
-- create with a key deletes the caller's expired keys, and `taskapi expire-keys` those of users who
-- stopped sending any. No foreign key to tasks: the key records a response, and a replay returns it
-- even after the task was changed or deleted (as the Idempotency-Key draft has it).
CREATE TABLE taskapi.idempotency_keys (
    user_id      text        NOT NULL DEFAULT taskapi.current_user_id(),
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    task_id      uuid        NOT NULL,
    body         text        NOT NULL,
    etag         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (user_id, key),
    CONSTRAINT idempotency_keys_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 255),
    -- 1..255 visible ASCII characters, as the API checks (api/idempotency.py).
    CONSTRAINT idempotency_keys_key_syntax CHECK (key ~ '^[!-~]{1,255}$'),
    CONSTRAINT idempotency_keys_request_hash_sha256 CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    -- Nobody keeps a key longer than the contract says, whoever writes the row.
    CONSTRAINT idempotency_keys_lifetime
        CHECK (expires_at > created_at AND expires_at <= created_at + interval '24 hours')
);

-- Each create with a key deletes its user's expired keys: this finds them without reading the user's
-- others (measured: without it, a user with 18,000 keys in their 24 hours cost every such create a
-- 6 ms scan).
CREATE INDEX idempotency_keys_user_expiry_idx ON taskapi.idempotency_keys (user_id, expires_at);

COMMENT ON TABLE taskapi.idempotency_keys IS
    'the 201 of each POST /api/tasks sent with an Idempotency-Key, per user, for 24 hours; '
    'row-level security: see sql/policies/idempotency_keys.sql';

-- Create a task once per (caller, key): in one statement, so the whole of it is one transaction with
-- the claims the API set (api/tasks.py sends it in the request's pipeline). Returns one row:
--   outcome 'created'  the task was created now; task_id, body and etag are its 201
--   outcome 'replayed' the key was used before with the same request: the 201 it produced then
--   outcome 'mismatch' the key was used before with another request (422)
--   outcome 'in_flight' another transaction holds the key right now (409)
--
-- In flight: a transaction-scoped advisory lock on a hash of (caller, key), taken before anything else
-- and without waiting. It is released at COMMIT or ROLLBACK, never held by a connection between
-- transactions, so it is safe behind PgBouncer in transaction mode (a session-level lock would stay
-- with whichever client next got the server connection). A hash collision of two (user, key) pairs
-- costs at most a spurious 409, never a wrong replay: the row is looked up by its real key.
-- Once the lock is held, no other transaction can be between its own lookup and its insert of this
-- key, so the lookup below sees every committed use of the key, and the insert cannot conflict.
--
-- Invoker's rights: every statement passes the caller's own policies, as the plain INSERT does. Every
-- call is schema-qualified and search_path is pinned, so nothing a caller creates can stand in.
-- No variable of a table's row type: resolving one opens the table, which would wait behind a lock on
-- it before the in-flight check could answer.
CREATE FUNCTION taskapi.create_task_once(
    p_key text, p_request_hash text, p_title text, p_description text, p_completed boolean,
    p_due_at timestamptz, p_priority smallint, p_tags text[], p_recurrence text)
    RETURNS TABLE (outcome text, task_id uuid, body text, etag text)
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_user text := taskapi.current_user_id();
    v_hash text;
BEGIN
    -- The seed only keeps these lock ids apart from other users of hashtextextended's default seed.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
            pg_catalog.hashtextextended(v_user || E'\n' || p_key, 1229)) THEN
        RETURN QUERY SELECT 'in_flight'::text, NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;

    -- Housekeeping without a cron: the caller's expired keys go now (the delete policy admits only
    -- expired rows of the caller's own).
    DELETE FROM taskapi.idempotency_keys AS k WHERE k.user_id = v_user AND k.expires_at <= pg_catalog.now();

    SELECT k.request_hash, k.task_id, k.body, k.etag INTO v_hash, task_id, body, etag
    FROM taskapi.idempotency_keys AS k
    WHERE k.user_id = v_user AND k.key = p_key AND k.expires_at > pg_catalog.now();
    IF FOUND THEN
        IF v_hash = p_request_hash THEN
            outcome := 'replayed';
        ELSE
            outcome := 'mismatch';
            task_id := NULL;
            body := NULL;
            etag := NULL;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    INSERT INTO taskapi.tasks AS t (title, description, completed, due_at, priority, tags, recurrence)
    VALUES (p_title, p_description, p_completed, p_due_at, p_priority, p_tags, p_recurrence)
    RETURNING t.id, taskapi.task_json(t)::text, taskapi.task_etag(t) INTO task_id, body, etag;

    INSERT INTO taskapi.idempotency_keys (key, request_hash, task_id, body, etag)
    VALUES (p_key, p_request_hash, task_id, body, etag);
    outcome := 'created';
    RETURN NEXT;
END
$$;

COMMENT ON FUNCTION taskapi.create_task_once(text, text, text, text, boolean, timestamptz, smallint, text[], text) IS
    'POST /api/tasks with an Idempotency-Key: create the task once per (caller, key) and remember its 201 '
    'for 24 hours; outcome created, replayed, mismatch or in_flight';

REVOKE ALL ON FUNCTION taskapi.create_task_once(text, text, text, text, boolean, timestamptz, smallint, text[], text)
    FROM PUBLIC;
