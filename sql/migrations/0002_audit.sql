-- Auditable by SQL alone (issue #4, CONTRACT.md section 7): schema taskapi_audit, where an auditor with
-- psql reads the tables and policies of schema taskapi, and taskapi_audit.findings() returns no rows
-- when the isolation posture holds and one row per problem otherwise. The running API calls findings()
-- as taskapi_app and answers 503 while it reports an error (api/posture.py); `taskapi audit` prints it.
-- Applied by `taskapi migrate` as taskapi_owner. Append-only: change these objects with a new file.
--
-- Every function here pins search_path, so no object a caller creates can stand in for a catalog,
-- and so pg_get_expr() always spells functions schema-qualified (`taskapi.current_user_id()`): the
-- text of a policy is then the same for every caller, which is what the drift check compares.
-- Nothing here is SECURITY DEFINER: every catalog read is world-readable (pg_roles, never pg_authid).

CREATE SCHEMA taskapi_audit;

COMMENT ON SCHEMA taskapi_audit IS
    'the isolation posture of schema taskapi, readable by taskapi_auditor: see docs/audit.md';

-- Every policy of schema taskapi in one normalised form: roles sorted by name (PUBLIC as `public`),
-- expressions as pg_get_expr() prints them under the pinned search_path. The view `policies`, the
-- record `taskapi migrate` writes into applied_policies, and the drift check all read this one
-- function, so the three compare like with like.
CREATE FUNCTION taskapi_audit.policy_definitions()
    RETURNS TABLE (policy_oid oid, table_name text, policy_name name, command text, permissive text,
                   roles name[], using_expr text, with_check_expr text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.oid,
           format('%I.%I', n.nspname, c.relname),
           p.polname,
           CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                         WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
           CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
           ARRAY(SELECT CASE WHEN r.oid = 0 THEN 'public'::name ELSE coalesce(a.rolname, r.oid::text::name) END
                 FROM unnest(p.polroles) AS r(oid) LEFT JOIN pg_roles a ON a.oid = r.oid
                 ORDER BY 1),
           pg_get_expr(p.polqual, p.polrelid),
           pg_get_expr(p.polwithcheck, p.polrelid)
    FROM pg_policy p
    JOIN pg_class c ON c.oid = p.polrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'taskapi'
$$;

COMMENT ON FUNCTION taskapi_audit.policy_definitions() IS
    'every policy of schema taskapi, normalised (roles sorted, expressions schema-qualified)';

-- CONTRACT.md section 7, item 1: every table of schema taskapi and whether RLS protects it.
CREATE VIEW taskapi_audit.tables WITH (security_invoker = true) AS
    SELECT format('%I.%I', n.nspname, c.relname) AS table_name,
           c.relrowsecurity AS rls_enabled,
           c.relforcerowsecurity AS rls_forced,
           pg_get_userbyid(c.relowner) AS owner,
           (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policy_count
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'taskapi' AND c.relkind IN ('r', 'p')
    ORDER BY 1;

COMMENT ON VIEW taskapi_audit.tables IS
    'every table of schema taskapi: RLS enabled, RLS forced, owner, number of policies';

-- CONTRACT.md section 7, item 1: every policy's text.
CREATE VIEW taskapi_audit.policies WITH (security_invoker = true) AS
    SELECT table_name, policy_name, command, permissive, roles, using_expr, with_check_expr
    FROM taskapi_audit.policy_definitions()
    ORDER BY table_name, policy_name;

COMMENT ON VIEW taskapi_audit.policies IS
    'every policy of schema taskapi: table, name, command, permissive, roles, USING, WITH CHECK';

-- The policies `taskapi migrate` created from sql/policies/ the last time it ran, written by it as
-- taskapi_owner in the transaction that applied the files (api/migrate.py). findings() reports every
-- live policy that differs from its row here (policy_drift): a policy edited, added or dropped by
-- hand. Whoever can edit policies (the owner, a superuser) can edit this table too: drift detection
-- catches a careless change, not a hostile administrator.
CREATE TABLE taskapi_audit.applied_policies (
    table_name      text        NOT NULL,
    policy_name     name        NOT NULL,
    command         text        NOT NULL,
    permissive      text        NOT NULL,
    roles           name[]      NOT NULL,
    using_expr      text,
    with_check_expr text,
    source_file     text        NOT NULL,
    source_sha256   text        NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, policy_name)
);

COMMENT ON TABLE taskapi_audit.applied_policies IS
    'the policies taskapi migrate last created from sql/policies/ (the reference of the policy_drift check)';

-- The deliberate exceptions to two checks, each with its reason, so an auditor can read the whole
-- allow-list in one query. Keep it short: every line is a place where a check looks away.
CREATE VIEW taskapi_audit.allow_list ("check", object, command, roles, reason)
    WITH (security_invoker = true) AS
    VALUES
        ('policy_always_true', 'tasks_owner_task_exists ON taskapi.tasks', 'SELECT',
         ARRAY['taskapi_owner']::name[],
         'lets taskapi.task_exists(), which runs as taskapi_owner under FORCE ROW LEVEL SECURITY, see every '
         'task id to tell 403 from 404; taskapi_owner is NOLOGIN and owns the table, so it gains nothing'),
        ('security_definer_not_allowed', 'taskapi.task_exists(uuid)', NULL, NULL,
         'the one deliberate look past RLS (CONTRACT.md section 6): returns whether a task id exists, '
         'no row data; must be owned by taskapi_owner and pin search_path');

COMMENT ON VIEW taskapi_audit.allow_list IS
    'the deliberate exceptions to policy_always_true and security_definer_not_allowed, with reasons';

-- CONTRACT.md section 7, item 2: no rows when every check holds, one row per problem otherwise.
-- `check` is a stable name (never reused), `severity` is `error` when the problem weakens isolation or
-- the guarantees around it (the running API answers 503 while one stands) and `warning` when it does
-- not (a performance trap, a denial that fails closed). docs/audit.md explains each check and its fix.
-- The names of the three roles and of the schemas are part of the contract (CONTRACT.md section 8).
CREATE FUNCTION taskapi_audit.findings()
    RETURNS TABLE ("check" text, severity text, object text, detail text, remedy text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
WITH
role_ids AS (
    SELECT to_regrole('taskapi_owner') AS owner_id,
           to_regrole('taskapi_app') AS app_id,
           to_regrole('taskapi_auditor') AS auditor_id
),
-- The schemas taskapi creates; none of their objects may belong to anyone but taskapi_owner.
own_schemas AS (
    SELECT n.oid, n.nspname FROM pg_namespace n
    WHERE n.nspname IN ('taskapi', 'taskapi_audit', 'taskapi_meta')
),
own_relations AS (
    SELECT c.oid, c.relkind, c.relowner, c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
           s.nspname, format('%I.%I', s.nspname, c.relname) AS name
    FROM pg_class c JOIN own_schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
),
data_tables AS (
    SELECT * FROM own_relations WHERE nspname = 'taskapi' AND relkind IN ('r', 'p')
),
own_functions AS (
    SELECT p.oid, p.proowner, p.prosecdef, p.proconfig, s.nspname, p.oid::regprocedure::text AS name
    FROM pg_proc p JOIN own_schemas s ON s.oid = p.pronamespace
),
-- Each policy with the facts the checks need. An expression "depends on the row" when its parse
-- tree holds a column reference (a VAR node); one that does not admits every row or none, whoever
-- asks. Identity calls "through (select ...)" are cut out of the text before looking for bare ones.
policy_facts AS (
    SELECT d.*, format('%I ON %s', d.policy_name, d.table_name) AS label, p.polpermissive, p.polcmd, p.polroles,
           p.polrelid,
           p.polqual IS NOT NULL AND p.polqual::text NOT LIKE '%{VAR %' AND d.using_expr <> 'false'
               AS using_row_independent,
           p.polwithcheck IS NOT NULL AND p.polwithcheck::text NOT LIKE '%{VAR %' AND d.with_check_expr <> 'false'
               AS check_row_independent,
           p.polqual::text LIKE '%{VAR %' AND strpos(d.using_expr, 'taskapi.current_user_id()') = 0
               AS using_ignores_identity,
           p.polwithcheck::text LIKE '%{VAR %' AND strpos(d.with_check_expr, 'taskapi.current_user_id()') = 0
               AS check_ignores_identity,
           strpos(regexp_replace(concat_ws(' ', d.using_expr, d.with_check_expr),
                                 '\(\s*SELECT taskapi\.current_user_id\(\)( AS [^()]*)?\)', '', 'g'),
                  'taskapi.current_user_id()') > 0 AS identity_bare
    FROM taskapi_audit.policy_definitions() d
    JOIN pg_policy p ON p.oid = d.policy_oid
),
allowed AS (
    SELECT a."check", a.object, a.command, a.roles FROM taskapi_audit.allow_list a
),
-- Roles the runtime or the auditor role can become (SET ROLE) that would undo the point of it.
privileged_roles AS (
    SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls,
           r.oid = (SELECT owner_id FROM role_ids)
           OR EXISTS (SELECT 1 FROM data_tables t WHERE t.relowner = r.oid) AS owns_data
    FROM pg_roles r
),
problems ("check", severity, object, detail, remedy) AS (
    SELECT 'role_missing', 'error', r.rolname,
           'the role does not exist, so the checks about it cannot hold',
           'run taskapi migrate (it creates the three roles)'
    FROM (VALUES ('taskapi_owner'), ('taskapi_app'), ('taskapi_auditor')) AS r(rolname)
    WHERE to_regrole(r.rolname) IS NULL

    UNION ALL
    SELECT 'rls_disabled', 'error', t.name,
           'row-level security is disabled: every role with a privilege on the table reaches every row',
           format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, or run taskapi migrate', t.name)
    FROM data_tables t WHERE NOT t.relrowsecurity

    UNION ALL
    SELECT 'rls_not_forced', 'error', t.name,
           'row-level security is not forced: the table owner, and every SECURITY DEFINER function it owns, '
           'reads and writes every row',
           format('ALTER TABLE %s FORCE ROW LEVEL SECURITY, or run taskapi migrate', t.name)
    FROM data_tables t WHERE NOT t.relforcerowsecurity

    UNION ALL
    SELECT 'policy_missing_for_command', 'warning', t.name,
           format('no permissive %s policy applies to %s, so row-level security refuses it every row '
                  '(it fails closed, but that command cannot work)', c.command, c.rolname),
           'add the policy to the table''s file in sql/policies/ and run taskapi migrate'
    FROM data_tables t
    CROSS JOIN (VALUES ('SELECT', 'r', 'taskapi_app'), ('INSERT', 'a', 'taskapi_app'),
                       ('UPDATE', 'w', 'taskapi_app'), ('DELETE', 'd', 'taskapi_app'),
                       ('SELECT', 'r', 'taskapi_auditor')) AS c(command, polcmd, rolname)
    WHERE to_regrole(c.rolname) IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM pg_policy p
          WHERE p.polrelid = t.oid AND p.polpermissive AND p.polcmd IN (c.polcmd, '*')
            AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS pr(oid)
                        WHERE pr.oid = 0 OR pg_has_role(to_regrole(c.rolname), pr.oid, 'USAGE')))

    UNION ALL
    SELECT 'policy_applies_to_public', 'error', f.label,
           'the policy names no role (TO PUBLIC): it applies to every role, including any created later',
           'name the roles (TO taskapi_app ...) in sql/policies/ and run taskapi migrate'
    FROM policy_facts f WHERE 0 = ANY (f.polroles)

    UNION ALL
    SELECT 'policy_always_true', 'error', f.label,
           concat_ws('; ',
                     CASE WHEN f.using_row_independent
                          THEN format('USING (%s) does not depend on the row: it admits every row', f.using_expr) END,
                     CASE WHEN f.check_row_independent
                          THEN format('WITH CHECK (%s) does not depend on the row: it admits every row',
                                      f.with_check_expr) END),
           'compare the row''s user_id with (SELECT taskapi.current_user_id()) in sql/policies/ and run '
           'taskapi migrate; an exception belongs on taskapi_audit.allow_list'
    FROM policy_facts f
    WHERE f.polpermissive AND (f.using_row_independent OR f.check_row_independent)
      AND NOT EXISTS (SELECT 1 FROM allowed a
                      WHERE a."check" = 'policy_always_true' AND a.object = f.label AND a.command = f.command
                        AND a.roles = f.roles AND f.using_expr = 'true' AND f.with_check_expr IS NULL)

    UNION ALL
    SELECT 'policy_ignores_identity', 'error', f.label,
           concat_ws('; ',
                     CASE WHEN f.using_ignores_identity
                          THEN format('USING (%s) does not call taskapi.current_user_id()', f.using_expr) END,
                     CASE WHEN f.check_ignores_identity
                          THEN format('WITH CHECK (%s) does not call taskapi.current_user_id()',
                                      f.with_check_expr) END)
           || ': rows are not scoped to the caller',
           'compare the row''s user_id with (SELECT taskapi.current_user_id()) in sql/policies/ and run '
           'taskapi migrate'
    FROM policy_facts f
    WHERE f.polpermissive AND (f.using_ignores_identity OR f.check_ignores_identity)

    UNION ALL
    SELECT 'policy_without_with_check', 'warning', f.label,
           CASE WHEN f.polcmd = 'a'
                THEN 'an INSERT policy without WITH CHECK admits no new row (it fails closed)'
                ELSE format('an %s policy without WITH CHECK checks new rows with USING only', f.command) END
           || '; state the check explicitly',
           'add WITH CHECK (user_id = (SELECT taskapi.current_user_id())) in sql/policies/ and run taskapi migrate'
    FROM policy_facts f
    WHERE f.polcmd IN ('a', 'w', '*') AND f.with_check_expr IS NULL

    UNION ALL
    SELECT 'identity_not_initplan', 'warning', f.label,
           'taskapi.current_user_id() is called bare, so it runs once per row instead of once per statement '
           'and the index on user_id cannot serve the comparison',
           'write (SELECT taskapi.current_user_id()) in sql/policies/ and run taskapi migrate'
    FROM policy_facts f WHERE f.identity_bare

    UNION ALL
    SELECT 'runtime_role_superuser', 'error', r.rolname,
           'the runtime role is a superuser: row-level security does not apply to it at all',
           'ALTER ROLE taskapi_app NOSUPERUSER, or run taskapi migrate'
    FROM pg_roles r WHERE r.oid = (SELECT app_id FROM role_ids) AND r.rolsuper

    UNION ALL
    SELECT 'runtime_role_bypassrls', 'error', r.rolname,
           'the runtime role has BYPASSRLS: row-level security does not apply to it',
           'ALTER ROLE taskapi_app NOBYPASSRLS, or run taskapi migrate'
    FROM pg_roles r WHERE r.oid = (SELECT app_id FROM role_ids) AND r.rolbypassrls

    UNION ALL
    SELECT 'runtime_role_owns_objects', 'error', pg_describe_object(d.classid, d.objid, d.objsubid),
           'owned by the runtime role: an owner can alter the object, and disable or drop the policies of a table',
           'ALTER ... OWNER TO taskapi_owner (taskapi migrate does it for the objects of schema taskapi), '
           'or drop the object'
    FROM pg_shdepend d
    WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = (SELECT app_id FROM role_ids) AND d.deptype = 'o'
      AND (d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           OR (d.classid = 'pg_database'::regclass
               AND d.objid = (SELECT oid FROM pg_database WHERE datname = current_database())))

    UNION ALL
    SELECT 'runtime_role_member_of_privileged_role', 'error', 'taskapi_app',
           format('the runtime role is a member of %I (%s), so it can SET ROLE to it', p.rolname,
                  concat_ws(', ', CASE WHEN p.rolsuper THEN 'superuser' END,
                            CASE WHEN p.rolbypassrls THEN 'BYPASSRLS' END,
                            CASE WHEN p.owns_data THEN 'owns the tables of schema taskapi' END)),
           format('REVOKE %I FROM taskapi_app (taskapi migrate revokes taskapi_owner)', p.rolname)
    FROM privileged_roles p
    WHERE p.oid <> (SELECT app_id FROM role_ids) AND (p.rolsuper OR p.rolbypassrls OR p.owns_data)
      AND pg_has_role((SELECT app_id FROM role_ids), p.oid, 'MEMBER')

    UNION ALL
    SELECT 'runtime_role_dangerous_privilege', 'error', o.name,
           format('the runtime role holds %s on it', string_agg(pr.privilege, ', ' ORDER BY pr.privilege))
           || CASE WHEN o.nspname = 'taskapi'
                   THEN ' (TRUNCATE empties the table past row-level security, TRIGGER runs code on every '
                        'user''s rows, REFERENCES probes other users'' keys)'
                   ELSE ' (this schema is only written by taskapi migrate)' END,
           format('REVOKE %s ON %s FROM taskapi_app', string_agg(pr.privilege, ', ' ORDER BY pr.privilege), o.name)
           || CASE WHEN o.nspname = 'taskapi' THEN ', or run taskapi migrate' ELSE '' END
    FROM own_relations o
    CROSS JOIN (VALUES ('TRUNCATE', true), ('REFERENCES', true), ('TRIGGER', true),
                       ('INSERT', false), ('UPDATE', false), ('DELETE', false)) AS pr(privilege, in_data_schema)
    WHERE o.relkind IN ('r', 'p', 'v', 'm', 'f') AND (pr.in_data_schema OR o.nspname <> 'taskapi')
      AND has_table_privilege((SELECT app_id FROM role_ids), o.oid, pr.privilege)
    GROUP BY o.name, o.nspname

    UNION ALL
    SELECT 'runtime_role_can_create', 'error', x.object,
           'the runtime role may CREATE in it: it could own objects there, and plant functions or views',
           format('REVOKE CREATE ON %s FROM taskapi_app', x.object)
           || CASE WHEN x.object = 'SCHEMA taskapi' THEN ', or run taskapi migrate' ELSE '' END
    FROM (SELECT format('SCHEMA %I', s.nspname) AS object FROM own_schemas s
          WHERE has_schema_privilege((SELECT app_id FROM role_ids), s.oid, 'CREATE')
          UNION ALL
          SELECT format('DATABASE %I', current_database())
          WHERE has_database_privilege((SELECT app_id FROM role_ids), current_database(), 'CREATE')) AS x

    UNION ALL
    SELECT 'auditor_can_write', 'error', x.object, x.detail,
           x.remedy
    FROM (SELECT r.rolname::text AS object,
                 'the auditor role is a superuser: it can write everything' AS detail,
                 'ALTER ROLE taskapi_auditor NOSUPERUSER, or run taskapi migrate' AS remedy
          FROM pg_roles r WHERE r.oid = (SELECT auditor_id FROM role_ids) AND r.rolsuper
          UNION ALL
          SELECT 'taskapi_auditor',
                 format('the auditor role is a member of %I, which owns the tables or is a superuser, '
                        'so it can SET ROLE to it and write', p.rolname),
                 format('REVOKE %I FROM taskapi_auditor (taskapi migrate revokes taskapi_owner)', p.rolname)
          FROM privileged_roles p
          WHERE p.oid <> (SELECT auditor_id FROM role_ids) AND (p.rolsuper OR p.owns_data)
            AND pg_has_role((SELECT auditor_id FROM role_ids), p.oid, 'MEMBER')
          UNION ALL
          SELECT o.name,
                 format('the auditor role holds %s on it', string_agg(pr.privilege, ', ' ORDER BY pr.privilege)),
                 format('REVOKE %s ON %s FROM taskapi_auditor', string_agg(pr.privilege, ', ' ORDER BY pr.privilege),
                        o.name)
                 || CASE WHEN o.nspname = 'taskapi' THEN ', or run taskapi migrate' ELSE '' END
          FROM own_relations o
          CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) AS pr(privilege)
          WHERE o.relkind IN ('r', 'p', 'v', 'm', 'f')
            AND has_table_privilege((SELECT auditor_id FROM role_ids), o.oid, pr.privilege)
          GROUP BY o.name, o.nspname
          UNION ALL
          SELECT format('SCHEMA %I', s.nspname), 'the auditor role may CREATE in the schema',
                 format('REVOKE CREATE ON SCHEMA %I FROM taskapi_auditor', s.nspname)
                 || CASE WHEN s.nspname = 'taskapi' THEN ', or run taskapi migrate' ELSE '' END
          FROM own_schemas s WHERE has_schema_privilege((SELECT auditor_id FROM role_ids), s.oid, 'CREATE')
          UNION ALL
          SELECT format('DATABASE %I', current_database()), 'the auditor role may create schemas in the database',
                 format('REVOKE CREATE ON DATABASE %I FROM taskapi_auditor', current_database())
          WHERE has_database_privilege((SELECT auditor_id FROM role_ids), current_database(), 'CREATE')) AS x

    UNION ALL
    SELECT 'auditor_bypassrls', 'error', 'taskapi_auditor',
           CASE WHEN p.oid = (SELECT auditor_id FROM role_ids)
                THEN 'the auditor role has BYPASSRLS: it reads every user''s rows, and impersonating a user in '
                     'psql no longer shows what that user sees'
                ELSE format('the auditor role is a member of %I, which has BYPASSRLS', p.rolname) END,
           CASE WHEN p.oid = (SELECT auditor_id FROM role_ids)
                THEN 'ALTER ROLE taskapi_auditor NOBYPASSRLS, or run taskapi migrate'
                ELSE format('REVOKE %I FROM taskapi_auditor', p.rolname) END
    FROM privileged_roles p
    WHERE p.rolbypassrls AND NOT p.rolsuper AND pg_has_role((SELECT auditor_id FROM role_ids), p.oid, 'MEMBER')

    UNION ALL
    SELECT 'role_can_create_in_other_schema', 'warning', format('SCHEMA %I', n.nspname),
           format('%s may CREATE in this schema; no path to another user''s rows by itself, but objects '
                  'planted on a search_path can trap a more privileged caller (CVE-2018-1058)', r.rolname),
           format('REVOKE CREATE ON SCHEMA %I FROM %s (and FROM PUBLIC if granted there)', n.nspname, r.rolname)
    FROM pg_namespace n
    CROSS JOIN (VALUES ('taskapi_app'), ('taskapi_auditor')) AS r(rolname)
    WHERE n.nspname NOT IN ('taskapi', 'taskapi_audit', 'taskapi_meta', 'pg_catalog', 'information_schema',
                            'pg_toast')
      AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
      AND has_schema_privilege(to_regrole(r.rolname), n.oid, 'CREATE')
      AND NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = r.rolname), false)

    UNION ALL
    SELECT 'security_definer_not_allowed', 'error', f.name,
           CASE WHEN a.object IS NULL
                THEN 'a SECURITY DEFINER function that is not on taskapi_audit.allow_list: it runs with its '
                     'owner''s rights, past row-level security for the rows the owner may see'
                ELSE format('allowed SECURITY DEFINER function owned by %I, not taskapi_owner: it runs with that '
                            'role''s rights', pg_get_userbyid(f.proowner)) END,
           CASE WHEN a.object IS NULL
                THEN format('ALTER FUNCTION %s SECURITY INVOKER, or drop it', f.name)
                ELSE format('ALTER FUNCTION %s OWNER TO taskapi_owner, or run taskapi migrate', f.name) END
    FROM own_functions f
    LEFT JOIN allowed a ON a."check" = 'security_definer_not_allowed' AND a.object = f.name
    WHERE f.prosecdef AND (a.object IS NULL OR f.proowner <> (SELECT owner_id FROM role_ids))

    UNION ALL
    SELECT 'security_definer_search_path_mutable', 'error', f.name,
           'a SECURITY DEFINER function without SET search_path: objects a caller creates can stand in for '
           'the ones it names, and run with its owner''s rights',
           format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.name)
    FROM own_functions f
    WHERE f.prosecdef
      AND NOT EXISTS (SELECT 1 FROM unnest(f.proconfig) AS c(setting) WHERE c.setting LIKE 'search_path=%')

    UNION ALL
    SELECT 'view_without_security_invoker', 'error', o.name,
           'a view without security_invoker reads its tables with its owner''s rights, so row-level security '
           'sees the owner, not the caller',
           format('ALTER VIEW %s SET (security_invoker = true), or drop it', o.name)
    FROM own_relations o
    WHERE o.nspname = 'taskapi' AND o.relkind = 'v'
      AND NOT EXISTS (SELECT 1 FROM pg_options_to_table(o.reloptions) AS x
                      WHERE x.option_name = 'security_invoker'
                        AND lower(x.option_value) IN ('true', 'on', 'yes', '1'))

    UNION ALL
    SELECT 'materialized_view_in_schema', 'error', o.name,
           'a materialized view stores rows read with its owner''s rights; row-level security does not apply to it',
           format('DROP MATERIALIZED VIEW %s', o.name)
    FROM own_relations o WHERE o.nspname = 'taskapi' AND o.relkind = 'm'

    UNION ALL
    SELECT 'foreign_table_in_schema', 'error', o.name,
           'a foreign table''s rows live in another server, where these policies do not apply',
           format('DROP FOREIGN TABLE %s', o.name)
    FROM own_relations o WHERE o.nspname = 'taskapi' AND o.relkind = 'f'

    UNION ALL
    SELECT 'object_owner_unexpected', 'error', x.object,
           format('owned by %I, not taskapi_owner: that role can alter it (and disable a table''s policies)',
                  pg_get_userbyid(x.owner_id)),
           'run taskapi migrate (it hands the objects of the three schemas back to taskapi_owner)'
    FROM (SELECT format('SCHEMA %I', s.nspname) AS object, n.nspowner AS owner_id
          FROM own_schemas s JOIN pg_namespace n ON n.oid = s.oid
          UNION ALL SELECT o.name, o.relowner FROM own_relations o
          UNION ALL SELECT f.name, f.proowner FROM own_functions f) AS x
    WHERE x.owner_id IS DISTINCT FROM (SELECT owner_id FROM role_ids)

    UNION ALL
    SELECT 'policy_drift', 'error', format('%I ON %s', coalesce(l.policy_name, a.policy_name),
                                           coalesce(l.table_name, a.table_name)),
           CASE WHEN a.policy_name IS NULL
                THEN 'the policy was not created by taskapi migrate from sql/policies/'
                WHEN l.policy_name IS NULL
                THEN format('taskapi migrate created it from %s, and it no longer exists', a.source_file)
                ELSE format('differs from what taskapi migrate created from %s: ', a.source_file)
                     || concat_ws('; ',
                        CASE WHEN l.command IS DISTINCT FROM a.command
                             THEN format('command %s, applied %s', l.command, a.command) END,
                        CASE WHEN l.permissive IS DISTINCT FROM a.permissive
                             THEN format('%s, applied %s', l.permissive, a.permissive) END,
                        CASE WHEN l.roles IS DISTINCT FROM a.roles
                             THEN format('roles %s, applied %s', l.roles, a.roles) END,
                        CASE WHEN l.using_expr IS DISTINCT FROM a.using_expr
                             THEN format('USING (%s), applied (%s)', l.using_expr, a.using_expr) END,
                        CASE WHEN l.with_check_expr IS DISTINCT FROM a.with_check_expr
                             THEN format('WITH CHECK (%s), applied (%s)', l.with_check_expr, a.with_check_expr) END)
                END,
           'run taskapi migrate to re-apply sql/policies/, then find out who changed the policy by hand'
    FROM taskapi_audit.policy_definitions() l
    FULL JOIN taskapi_audit.applied_policies a ON a.table_name = l.table_name AND a.policy_name = l.policy_name
    WHERE a.policy_name IS NULL OR l.policy_name IS NULL
       OR (l.command, l.permissive, l.roles, l.using_expr, l.with_check_expr)
          IS DISTINCT FROM (a.command, a.permissive, a.roles, a.using_expr, a.with_check_expr)
)
SELECT "check", severity, object, detail, remedy
FROM problems
ORDER BY severity = 'warning', "check", object, detail
$$;

COMMENT ON FUNCTION taskapi_audit.findings() IS
    'no rows when the isolation posture of schema taskapi holds; else one row per problem (docs/audit.md)';

-- Reading the posture: the auditor reads everything here; the runtime role runs findings() for the
-- posture guard, which needs what findings() reads. Nobody but taskapi_owner writes here.
REVOKE ALL ON ALL TABLES IN SCHEMA taskapi_audit FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA taskapi_audit FROM PUBLIC;
GRANT USAGE ON SCHEMA taskapi_audit TO taskapi_auditor, taskapi_app;
GRANT SELECT ON taskapi_audit.tables, taskapi_audit.policies, taskapi_audit.applied_policies,
                taskapi_audit.allow_list TO taskapi_auditor;
GRANT SELECT ON taskapi_audit.applied_policies, taskapi_audit.allow_list TO taskapi_app;
GRANT EXECUTE ON FUNCTION taskapi_audit.findings(), taskapi_audit.policy_definitions()
    TO taskapi_auditor, taskapi_app;
