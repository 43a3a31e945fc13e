-- The isolation posture of schema taskapi, asserted with pgTAP's catalog functions: which policies
-- exist, for which command and roles; which privileges each role holds; which function looks past
-- row-level security; that the manifest taskapi migrate recorded still holds and nothing outside
-- the schemas reaches into them (issue #9); and that taskapi_audit.findings() agrees (no rows).
-- Reads only. The syntax is kept to plain SELECTs of pgTAP's basic functions (ok, is, is_empty,
-- isnt_empty): CI runs this against PostgreSQL 15 with pg_prove.
-- Run: tests/sql/run-pgtap <superuser DSN>, or pg_prove -d <DSN> tests/sql/*.sql (docs/audit.md).

BEGIN;
SELECT plan(64);

SELECT tables_are('taskapi', ARRAY['idempotency_keys', 'task_counts', 'tasks'],
                  'schema taskapi holds only the tasks, their counts and the creates'' idempotency keys');
SELECT table_owner_is('taskapi', 'idempotency_keys', 'taskapi_owner', 'taskapi.idempotency_keys belongs to taskapi_owner');
SELECT ok((SELECT relrowsecurity AND relforcerowsecurity FROM pg_catalog.pg_class
           WHERE oid = 'taskapi.idempotency_keys'::regclass),
          'taskapi.idempotency_keys has row-level security enabled and forced');
SELECT policies_are('taskapi', 'idempotency_keys',
                    ARRAY['idempotency_keys_select', 'idempotency_keys_insert', 'idempotency_keys_delete_expired'],
                    'taskapi.idempotency_keys has exactly its three policies (no UPDATE: a recorded response never changes)');
SELECT table_privs_are('taskapi', 'idempotency_keys', 'taskapi_app', ARRAY['SELECT', 'INSERT', 'DELETE'],
                       'taskapi_app may read, record and expire its keys, never change one');
SELECT table_privs_are('taskapi', 'idempotency_keys', 'taskapi_auditor', ARRAY['SELECT'],
                       'taskapi_auditor may only SELECT on taskapi.idempotency_keys');
SELECT table_privs_are('taskapi', 'idempotency_keys', 'public', ARRAY[]::text[],
                       'PUBLIC holds nothing on taskapi.idempotency_keys');
SELECT is((SELECT prosecdef FROM pg_catalog.pg_proc
           WHERE oid = 'taskapi.create_task_once(text, text, text, text, boolean, timestamptz, smallint, text[], text)'::regprocedure),
          false, 'taskapi.create_task_once runs with the caller''s rights');
SELECT table_owner_is('taskapi', 'task_counts', 'taskapi_owner', 'taskapi.task_counts belongs to taskapi_owner');
SELECT ok((SELECT relrowsecurity AND relforcerowsecurity FROM pg_catalog.pg_class
           WHERE oid = 'taskapi.task_counts'::regclass),
          'taskapi.task_counts has row-level security enabled and forced');
SELECT policies_are('taskapi', 'task_counts', ARRAY['task_counts_select', 'task_counts_insert', 'task_counts_update'],
                    'taskapi.task_counts has exactly its three policies (no DELETE: nobody may)');
SELECT table_privs_are('taskapi', 'task_counts', 'taskapi_app', ARRAY['SELECT', 'INSERT', 'UPDATE'],
                       'taskapi_app may read and move counts, never delete them');
SELECT table_privs_are('taskapi', 'task_counts', 'taskapi_auditor', ARRAY['SELECT'],
                       'taskapi_auditor may only SELECT on taskapi.task_counts');
SELECT table_privs_are('taskapi', 'task_counts', 'public', ARRAY[]::text[],
                       'PUBLIC holds nothing on taskapi.task_counts');
SELECT is((SELECT count(*)::int FROM taskapi_audit.findings()), 0, 'findings() is empty on a fresh migrate');
SELECT table_owner_is('taskapi', 'tasks', 'taskapi_owner', 'taskapi.tasks belongs to taskapi_owner');
SELECT ok((SELECT relrowsecurity FROM pg_catalog.pg_class WHERE oid = 'taskapi.tasks'::regclass),
          'taskapi.tasks has row-level security enabled');
SELECT ok((SELECT relforcerowsecurity FROM pg_catalog.pg_class WHERE oid = 'taskapi.tasks'::regclass),
          'taskapi.tasks has row-level security forced (its owner is subject to it too)');

-- Every policy, its command and its roles: sql/policies/tasks.sql, nothing more.
SELECT policies_are('taskapi', 'tasks',
                    ARRAY['tasks_select', 'tasks_insert', 'tasks_update', 'tasks_delete', 'tasks_owner_task_exists'],
                    'taskapi.tasks has exactly the policies of sql/policies/tasks.sql');
SELECT policy_cmd_is('taskapi', 'tasks', 'tasks_select', 'SELECT', 'policy tasks_select is for SELECT');
SELECT policy_cmd_is('taskapi', 'tasks', 'tasks_insert', 'INSERT', 'policy tasks_insert is for INSERT');
SELECT policy_cmd_is('taskapi', 'tasks', 'tasks_update', 'UPDATE', 'policy tasks_update is for UPDATE');
SELECT policy_cmd_is('taskapi', 'tasks', 'tasks_delete', 'DELETE', 'policy tasks_delete is for DELETE');
SELECT policy_cmd_is('taskapi', 'tasks', 'tasks_owner_task_exists', 'SELECT', 'policy tasks_owner_task_exists is for SELECT');
SELECT policy_roles_are('taskapi', 'tasks', 'tasks_select', ARRAY['taskapi_app', 'taskapi_auditor'],
                        'policy tasks_select applies to taskapi_app, taskapi_auditor only');
SELECT policy_roles_are('taskapi', 'tasks', 'tasks_insert', ARRAY['taskapi_app'],
                        'policy tasks_insert applies to taskapi_app only');
SELECT policy_roles_are('taskapi', 'tasks', 'tasks_update', ARRAY['taskapi_app'],
                        'policy tasks_update applies to taskapi_app only');
SELECT policy_roles_are('taskapi', 'tasks', 'tasks_delete', ARRAY['taskapi_app'],
                        'policy tasks_delete applies to taskapi_app only');
SELECT policy_roles_are('taskapi', 'tasks', 'tasks_owner_task_exists', ARRAY['taskapi_owner'],
                        'policy tasks_owner_task_exists applies to taskapi_owner only');
SELECT is((SELECT array_agg(policy_name ORDER BY policy_name) FROM taskapi_audit.policies
           WHERE using_expr = 'true' OR with_check_expr = 'true'),
          ARRAY['tasks_owner_task_exists']::name[],
          'the only always-true policy is the allow-listed one, for taskapi.task_exists()');
SELECT is((SELECT array_agg(policy_name ORDER BY policy_name) FROM taskapi_audit.policies
           WHERE command IN ('INSERT', 'UPDATE') AND with_check_expr IS NULL),
          NULL, 'every INSERT and UPDATE policy has a WITH CHECK');

-- Privileges: exactly what each role needs. No TRUNCATE, REFERENCES or TRIGGER for anyone but the owner.
SELECT table_privs_are('taskapi', 'tasks', 'taskapi_app', ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
                       'taskapi_app may SELECT, INSERT, UPDATE, DELETE on taskapi.tasks, nothing else');
SELECT table_privs_are('taskapi', 'tasks', 'taskapi_auditor', ARRAY['SELECT'],
                       'taskapi_auditor may only SELECT on taskapi.tasks');
SELECT table_privs_are('taskapi', 'tasks', 'public', ARRAY[]::text[], 'PUBLIC holds nothing on taskapi.tasks');
SELECT schema_privs_are('taskapi', 'taskapi_app', ARRAY['USAGE'], 'taskapi_app may not CREATE in schema taskapi');
SELECT schema_privs_are('taskapi', 'taskapi_auditor', ARRAY['USAGE'],
                        'taskapi_auditor may not CREATE in schema taskapi');
SELECT schema_privs_are('taskapi_audit', 'taskapi_auditor', ARRAY['USAGE'],
                        'taskapi_auditor may not CREATE in schema taskapi_audit');
SELECT table_privs_are('taskapi_audit', 'applied_policies', 'taskapi_app', ARRAY['SELECT'],
                       'taskapi_app cannot rewrite the record of applied policies');

-- The roles.
SELECT isnt_superuser('taskapi_app');
SELECT isnt_superuser('taskapi_auditor');
SELECT is((SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = 'taskapi_app'), false,
          'taskapi_app has no BYPASSRLS');
SELECT is((SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = 'taskapi_auditor'), false,
          'taskapi_auditor has no BYPASSRLS');
SELECT is((SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = 'taskapi_owner'), false,
          'taskapi_owner cannot log in');
SELECT ok(NOT pg_has_role('taskapi_app', 'taskapi_owner', 'MEMBER'), 'taskapi_app cannot become taskapi_owner');
SELECT ok(NOT pg_has_role('taskapi_auditor', 'taskapi_owner', 'MEMBER'),
          'taskapi_auditor cannot become taskapi_owner');

-- The one deliberate look past row-level security, and the functions that must not be one.
SELECT is_definer('taskapi', 'task_exists', ARRAY['uuid'], 'taskapi.task_exists(uuid) is SECURITY DEFINER');
SELECT function_owner_is('taskapi', 'task_exists', ARRAY['uuid'], 'taskapi_owner',
                         'taskapi.task_exists(uuid) runs as taskapi_owner');
SELECT is((SELECT proconfig FROM pg_catalog.pg_proc WHERE oid = 'taskapi.task_exists(uuid)'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp'], 'taskapi.task_exists(uuid) pins search_path');
SELECT isnt_definer('taskapi', 'current_user_id', ARRAY[]::name[],
                    'taskapi.current_user_id() runs with the caller''s rights');
SELECT isnt_definer('taskapi_audit', 'findings', ARRAY[]::name[],
                    'taskapi_audit.findings() runs with the caller''s rights');
SELECT is((SELECT array_agg(p.oid::regprocedure::text) FROM pg_catalog.pg_proc p
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname IN ('taskapi', 'taskapi_audit') AND p.prosecdef),
          ARRAY['taskapi.task_exists(uuid)'], 'taskapi.task_exists(uuid) is the only SECURITY DEFINER function');
SELECT is_empty($$SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'taskapi' AND c.relkind IN ('v', 'm', 'f')$$,
                'schema taskapi has no view, materialized view or foreign table');

-- The allow-list (issue #9): what taskapi migrate recorded is what the catalogs say now, and nothing
-- outside the taskapi schemas reaches into them.
SELECT isnt_empty('SELECT 1 FROM taskapi_audit.manifest', 'taskapi migrate recorded a manifest');
SELECT is_empty($$SELECT kind, object, definition FROM taskapi_audit.live_manifest()
                  EXCEPT SELECT kind, object, definition FROM taskapi_audit.manifest$$,
                'nothing that defines isolation was added or changed since taskapi migrate recorded it');
SELECT is_empty($$SELECT kind, object, definition FROM taskapi_audit.manifest
                  EXCEPT SELECT kind, object, definition FROM taskapi_audit.live_manifest()$$,
                'nothing taskapi migrate recorded is gone or different');
SELECT is_empty($$SELECT r.rolname FROM pg_catalog.pg_roles r
                  WHERE r.rolname <> 'taskapi_app' AND pg_catalog.pg_has_role('taskapi_app', r.oid, 'MEMBER')$$,
                'taskapi_app can become no other role, predefined roles included');
SELECT is_empty($$SELECT r.rolname FROM pg_catalog.pg_roles r
                  WHERE r.rolname <> 'taskapi_auditor'
                    AND pg_catalog.pg_has_role('taskapi_auditor', r.oid, 'MEMBER')$$,
                'taskapi_auditor can become no other role, predefined roles included');
SELECT is_empty($$SELECT rolname FROM pg_catalog.pg_roles
                  WHERE rolname IN ('taskapi_app', 'taskapi_auditor')
                    AND (rolcreaterole OR rolcreatedb OR rolreplication)$$,
                'neither login role has CREATEROLE, CREATEDB or REPLICATION');
SELECT is_empty($$SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
                  WHERE (d.refclassid, d.refobjid) IN (SELECT classid, objid FROM taskapi_audit.own_objects())
                    AND (d.classid, d.objid) NOT IN (SELECT classid, objid FROM taskapi_audit.own_objects())$$,
                'no object outside the taskapi schemas depends on theirs (views, foreign keys, children...)');
SELECT is_empty($$SELECT p.oid FROM pg_catalog.pg_proc p
                  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.prosecdef AND n.nspname NOT IN ('taskapi', 'taskapi_audit', 'taskapi_meta')
                    AND (pg_catalog.has_function_privilege('taskapi_app', p.oid, 'EXECUTE')
                         OR pg_catalog.has_function_privilege('taskapi_auditor', p.oid, 'EXECUTE'))$$,
                'no SECURITY DEFINER function elsewhere may be run by a login role');
SELECT is_empty($$SELECT pubname FROM pg_catalog.pg_publication p
                  WHERE p.puballtables
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t
                                WHERE t.pubname = p.pubname AND t.schemaname = 'taskapi')$$,
                'no publication sends the tasks anywhere');
SELECT is_empty('SELECT evtname FROM pg_catalog.pg_event_trigger', 'no event trigger runs inside DDL');
SELECT is_empty($$SELECT umuser FROM pg_catalog.pg_user_mappings$$, 'no user mapping carries credentials');

-- And the database's own verdict.
SELECT is_empty('SELECT * FROM taskapi_audit.findings()', 'taskapi_audit.findings() returns no rows');

SELECT * FROM finish();
ROLLBACK;
