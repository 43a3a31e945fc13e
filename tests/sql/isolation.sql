-- Isolation proven by trying it: two users write and read as taskapi_app, and the auditor reads as
-- one of them, exactly as the API and CONTRACT.md section 7 do: the identity is the transaction-local
-- setting request.jwt.claims. Everything happens in one transaction that is rolled back, so it may
-- run against a database with real data; it needs a role that may SET ROLE taskapi_app.

BEGIN;
SELECT plan(21);

-- SET LOCAL request.jwt.claims is set_config('request.jwt.claims', ..., true) without an output row.
SET LOCAL ROLE taskapi_app;

SET LOCAL request.jwt.claims = '{"sub": "pgtap-alice"}';
SELECT lives_ok($$INSERT INTO taskapi.tasks (title) VALUES ('alice''s task')$$, 'alice creates a task');
SELECT lives_ok($$SELECT set_config('pgtap.alice_task', (SELECT id::text FROM taskapi.tasks), true)$$,
                'alice reads back the id of her task');
SELECT is(taskapi.current_user_id(), 'pgtap-alice', 'taskapi.current_user_id() is the sub of the claims');

SET LOCAL request.jwt.claims = '{"sub": "pgtap-bob"}';
SELECT lives_ok($$INSERT INTO taskapi.tasks (title) VALUES ('bob''s task')$$, 'bob creates a task');
SELECT results_eq($$SELECT user_id, title FROM taskapi.tasks$$, $$VALUES ('pgtap-bob', 'bob''s task')$$,
                  'bob sees his task and no other row');
SELECT is_empty($$SELECT 1 FROM taskapi.tasks WHERE id = current_setting('pgtap.alice_task')::uuid$$,
                'bob cannot read alice''s task by its id');
SELECT ok(taskapi.task_exists(current_setting('pgtap.alice_task')::uuid),
          'taskapi.task_exists() tells bob that the id exists (403, not 404), and nothing else');
SELECT is_empty($$UPDATE taskapi.tasks SET title = 'taken' WHERE id = current_setting('pgtap.alice_task')::uuid
                  RETURNING id$$, 'bob cannot update alice''s task');
SELECT is_empty($$DELETE FROM taskapi.tasks WHERE id = current_setting('pgtap.alice_task')::uuid RETURNING id$$,
                'bob cannot delete alice''s task');
SELECT throws_ok($$INSERT INTO taskapi.tasks (user_id, title) VALUES ('pgtap-alice', 'forged')$$, '42501', NULL,
                 'bob cannot create a task as alice (WITH CHECK)');
SELECT throws_ok($$UPDATE taskapi.tasks SET user_id = 'pgtap-alice'$$, '42501', NULL,
                 'bob cannot give his task to alice (WITH CHECK)');
SELECT throws_ok($$TRUNCATE taskapi.tasks$$, '42501', NULL, 'taskapi_app cannot TRUNCATE, which ignores RLS');
SELECT throws_ok($$CREATE TABLE taskapi.planted (id int)$$, '42501', NULL,
                 'taskapi_app cannot create objects in schema taskapi');

SET LOCAL request.jwt.claims = '';
SELECT is(taskapi.current_user_id(), NULL, 'without claims taskapi.current_user_id() is NULL');
SELECT is_empty($$SELECT * FROM taskapi.tasks$$, 'without claims no row is visible');
SELECT is_empty($$UPDATE taskapi.tasks SET title = 'taken' RETURNING id$$, 'without claims nothing is updated');
SELECT throws_ok($$INSERT INTO taskapi.tasks (user_id, title) VALUES ('pgtap-alice', 'forged')$$, '42501', NULL,
                 'without claims nothing is created');

-- The auditor impersonates alice (CONTRACT.md section 7, recipe 3) and sees what she sees.
RESET ROLE;
SET LOCAL ROLE taskapi_auditor;
SET LOCAL request.jwt.claims = '{"sub": "pgtap-alice"}';
SELECT results_eq($$SELECT user_id, title FROM taskapi.tasks$$, $$VALUES ('pgtap-alice', 'alice''s task')$$,
                  'the auditor impersonating alice sees her task and no other row');
SELECT throws_ok($$INSERT INTO taskapi.tasks (title) VALUES ('by the auditor')$$, '42501', NULL,
                 'the auditor cannot create a task');
SELECT throws_ok($$UPDATE taskapi.tasks SET completed = true$$, '42501', NULL, 'the auditor cannot update a task');
SELECT throws_ok($$DELETE FROM taskapi.tasks$$, '42501', NULL, 'the auditor cannot delete a task');

SELECT * FROM finish();
ROLLBACK;
