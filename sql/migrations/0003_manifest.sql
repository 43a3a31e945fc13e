-- The audit as an allow-list (issue #9): what may reach the tasks is exactly what `taskapi migrate`
-- installed, and anything else is a finding.
--
-- * taskapi_audit.live_manifest() fingerprints, from the catalogs, everything that defines isolation:
--   every function, relation, column, trigger, rule, constraint and index of the three taskapi
--   schemas, the dependencies of their tables, the schemas' and the database's owners and ACLs,
--   the attributes, settings and memberships of the three roles, the database's settings, the
--   default privileges that will shape future objects, and the built-in functions, operators and
--   casts of pg_catalog. It is derived from the catalogs, never from a list of names, so whatever a
--   later migration adds is covered without touching this file.
-- * taskapi_audit.manifest is what live_manifest() returned when `taskapi migrate` last ran: migrate
--   writes it as taskapi_owner in the transaction that applies sql/policies/ (api/migrate.py).
-- * taskapi_audit.findings() (replaced here) compares the two, so migrate and the audit compare like
--   with like, and adds closure checks over the whole database that no manifest can bless: objects
--   outside the taskapi schemas that depend on their tables, SECURITY DEFINER functions anywhere
--   that a login role may run, memberships of the login roles, foreign data, publications, event
--   triggers.
--
-- Applied by `taskapi migrate` as taskapi_owner. Append-only: yoyo records a hash of this file's
-- *name*, so an edit to an applied migration would go unnoticed. Change these objects with a new file.
-- Every function pins search_path, so nothing a caller creates can stand in for a catalog object.

CREATE TABLE taskapi_audit.manifest (
    kind        text        NOT NULL,
    object      text        NOT NULL,
    definition  jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, object)
);

COMMENT ON TABLE taskapi_audit.manifest IS
    'what taskapi_audit.live_manifest() returned when taskapi migrate last ran (the reference of the *_drift checks)';

-- An ACL as the sorted JSON array of its items, the default ACL (a NULL column) spelled out: sorted
-- because GRANT appends and REVOKE removes, and spelled out because a GRANT and its REVOKE leave an
-- explicit copy of the default behind; either way the privileges are the same. `objtype` and `owner`
-- are acldefault()'s. No SET clause, so the planner inlines it; every name in it is qualified instead.
CREATE FUNCTION taskapi_audit.acl_json(acl aclitem[], objtype "char", owner oid) RETURNS jsonb
    LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.to_jsonb(ARRAY(SELECT a::pg_catalog.text
                                     FROM pg_catalog.unnest(COALESCE(acl, pg_catalog.acldefault(objtype, owner))) AS a
                                     ORDER BY 1))
$$;

COMMENT ON FUNCTION taskapi_audit.acl_json(aclitem[], "char", oid) IS
    'an ACL (NULL: the default for objtype and owner) as a sorted JSON array of its items';

-- Every object of the three schemas, found from the catalogs: what depends on one of the schemas,
-- and the parts of those objects that PostgreSQL creates and drops with them (columns' defaults,
-- constraints, triggers, rules, policies, indexes, row and array types, TOAST tables). A relation or
-- type counts only when it lives in the schemas itself: a sequence OWNED BY a column, elsewhere, is
-- not ours. Anything else that depends on these objects, or that they depend on, is outside, and
-- findings() reports it whatever the manifest says.
CREATE FUNCTION taskapi_audit.own_objects() RETURNS TABLE (classid oid, objid oid)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE
own_schemas AS (
    SELECT n.oid FROM pg_namespace n WHERE n.nspname IN ('taskapi', 'taskapi_audit', 'taskapi_meta')
),
found (classid, objid) AS (
    SELECT d.classid, d.objid FROM pg_depend d
    WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid IN (SELECT oid FROM own_schemas)
    UNION
    SELECT d.classid, d.objid
    FROM found f
    JOIN pg_depend d ON d.refclassid = f.classid AND d.refobjid = f.objid AND d.deptype IN ('a', 'i')
    WHERE d.classid IN ('pg_trigger'::regclass, 'pg_rewrite'::regclass, 'pg_constraint'::regclass,
                        'pg_attrdef'::regclass, 'pg_policy'::regclass)
       OR (d.classid = 'pg_class'::regclass
           AND (SELECT c.relnamespace FROM pg_class c WHERE c.oid = d.objid)
               IN (SELECT oid FROM own_schemas UNION ALL SELECT 'pg_toast'::regnamespace))
       OR (d.classid = 'pg_type'::regclass
           AND (SELECT t.typnamespace FROM pg_type t WHERE t.oid = d.objid)
               IN (SELECT oid FROM own_schemas UNION ALL SELECT 'pg_toast'::regnamespace))
)
SELECT classid, objid FROM found
$$;

COMMENT ON FUNCTION taskapi_audit.own_objects() IS
    'every object of the schemas taskapi, taskapi_audit and taskapi_meta, and their parts (classid, objid)';

-- One row per object that defines isolation: (kind, object) names it, `definition` is its
-- fingerprint as JSON (readable, so a difference can be shown key by key). The names use
-- pg_identify_object()'s identities, which are always schema-qualified. Values that change without
-- anyone changing the object (statistics, relfilenode, an index being rebuilt concurrently, role
-- passwords, connection limits, password expiry) are left out: they would close the API for nothing.
CREATE FUNCTION taskapi_audit.live_manifest()
    RETURNS TABLE (kind text, object text, definition jsonb)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
WITH
own_schemas AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n
    WHERE n.nspname IN ('taskapi', 'taskapi_audit', 'taskapi_meta')
),
own_relations AS (
    SELECT c.*, format('%I.%I', s.nspname, c.relname) AS name
    FROM pg_class c JOIN own_schemas s ON s.oid = c.relnamespace
),
the_roles AS (
    SELECT r.* FROM pg_roles r WHERE r.rolname IN ('taskapi_owner', 'taskapi_app', 'taskapi_auditor')
),
this_database AS (
    SELECT d.* FROM pg_database d WHERE d.datname = current_database()
),
-- Every pg_depend edge between two objects of the schemas, at object level: whatever kind of object a
-- future PostgreSQL hangs on a table shows up here. Edges that leave the schemas are findings of
-- their own (outside_dependent, outside_dependency). Policies of schema taskapi are left to
-- policy_drift, which compares their full text; an index being built or dropped concurrently (not
-- yet valid) is left out until it is.
ours AS (
    SELECT classid, objid FROM taskapi_audit.own_objects()
),
edges AS (
    SELECT DISTINCT d.classid, d.objid, d.refclassid, d.refobjid, d.deptype
    FROM pg_depend d
    WHERE (d.classid, d.objid) IN (SELECT classid, objid FROM ours)
      AND (d.refclassid, d.refobjid) IN (SELECT classid, objid FROM ours)
      AND NOT (d.classid = 'pg_policy'::regclass
               AND (SELECT p.polrelid FROM pg_policy p WHERE p.oid = d.objid)
                   IN (SELECT oid FROM own_relations WHERE relnamespace = 'taskapi'::regnamespace))
      AND NOT (d.classid = 'pg_class'::regclass
               AND EXISTS (SELECT 1 FROM pg_index x WHERE x.indexrelid = d.objid AND NOT x.indisvalid))
)
SELECT 'schema'::text AS kind, format('schema %I', s.nspname) AS object,
       jsonb_build_object('owner', pg_get_userbyid(s.nspowner),
                          'acl', taskapi_audit.acl_json(s.nspacl, 'n', s.nspowner))
FROM own_schemas s

UNION ALL
SELECT 'relation', i.type || ' ' || i.identity,
       jsonb_build_object('relkind', c.relkind, 'owner', pg_get_userbyid(c.relowner),
                          'acl', taskapi_audit.acl_json(c.relacl,
                                                        (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char",
                                                        c.relowner),
                          'rls_enabled', c.relrowsecurity, 'rls_forced', c.relforcerowsecurity,
                          'options', to_jsonb(ARRAY(SELECT o FROM unnest(c.reloptions) AS o ORDER BY 1)),
                          'persistence', c.relpersistence, 'is_partition', c.relispartition,
                          'partition_bound', pg_get_expr(c.relpartbound, c.oid),
                          'replica_identity', c.relreplident)
FROM own_relations c
CROSS JOIN LATERAL pg_identify_object('pg_class'::regclass, c.oid, 0) AS i
WHERE c.relkind NOT IN ('i', 'I')

UNION ALL
SELECT 'column', format('column %s.%I', c.name, a.attname),
       jsonb_build_object('type', format_type(a.atttypid, a.atttypmod),
                          'collation', (SELECT format('%I.%I', cn.nspname, co.collname)
                                        FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                                        WHERE co.oid = a.attcollation),
                          'not_null', a.attnotnull, 'default', pg_get_expr(ad.adbin, ad.adrelid),
                          'identity', a.attidentity, 'generated', a.attgenerated,
                          'acl', taskapi_audit.acl_json(a.attacl, 'c', c.relowner))
FROM own_relations c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')

UNION ALL
-- Every column of pg_proc but the oid (whatever a future version adds is covered): body, language,
-- volatility, strictness, leakproofness, security, parallel safety, settings, argument and result
-- types; with the owner's name and the ACL sorted.
SELECT 'function', 'function ' || p.oid::regprocedure::text,
       (to_jsonb(p) - 'oid' - 'proowner' - 'proacl' - 'pronamespace')
       || jsonb_build_object('owner', pg_get_userbyid(p.proowner),
                             'acl', taskapi_audit.acl_json(p.proacl, 'f', p.proowner))
FROM pg_proc p JOIN own_schemas s ON s.oid = p.pronamespace

UNION ALL
SELECT 'trigger', format('trigger %I on %s', t.tgname, c.name),
       jsonb_build_object('definition', pg_get_triggerdef(t.oid), 'enabled', t.tgenabled,
                          'internal', t.tgisinternal)
FROM pg_trigger t JOIN own_relations c ON c.oid = t.tgrelid

UNION ALL
SELECT 'rule', format('rule %I on %s', r.rulename, c.name),
       jsonb_build_object('definition', pg_get_ruledef(r.oid), 'enabled', r.ev_enabled)
FROM pg_rewrite r JOIN own_relations c ON c.oid = r.ev_class

UNION ALL
SELECT 'constraint', format('constraint %I on %s', k.conname, c.name),
       jsonb_build_object('definition', pg_get_constraintdef(k.oid), 'validated', k.convalidated)
FROM pg_constraint k JOIN own_relations c ON c.oid = k.conrelid

UNION ALL
SELECT 'index', format('index %s', c.name),
       jsonb_build_object('definition', pg_get_indexdef(c.oid))
FROM own_relations c JOIN pg_index x ON x.indexrelid = c.oid
WHERE x.indisvalid

UNION ALL
SELECT 'dependency', e.object, jsonb_build_object('types', jsonb_agg(DISTINCT e.deptype))
FROM (SELECT (SELECT i.type || ' ' || i.identity FROM pg_identify_object(d.classid, d.objid, 0) AS i)
             || ' depends on '
             || (SELECT i.type || ' ' || i.identity FROM pg_identify_object(d.refclassid, d.refobjid, 0) AS i)
             AS object,
             d.deptype::text AS deptype
      FROM edges d) AS e
GROUP BY e.object

UNION ALL
-- Every attribute of the role but the password (never readable here), its expiry and connection
-- limit, and its settings (kind `setting`); whatever attribute a future version adds is covered.
SELECT 'role', format('role %I', r.rolname),
       to_jsonb(r) - 'oid' - 'rolpassword' - 'rolvaliduntil' - 'rolconnlimit' - 'rolconfig'
FROM the_roles r

UNION ALL
-- ALTER ROLE ... [IN DATABASE ...] SET and ALTER DATABASE ... SET that reach this database's sessions
-- of the three roles: search_path, row_security, request.jwt.claims, preloaded libraries...
SELECT 'setting',
       CASE WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'settings of every role in every database'
            WHEN s.setrole = 0 THEN 'settings of this database'
            WHEN s.setdatabase = 0 THEN format('settings of role %I in every database', pg_get_userbyid(s.setrole))
            ELSE format('settings of role %I in this database', pg_get_userbyid(s.setrole)) END,
       jsonb_build_object('settings', to_jsonb(ARRAY(SELECT c FROM unnest(s.setconfig) AS c ORDER BY 1)))
FROM pg_db_role_setting s
WHERE s.setdatabase IN (0, (SELECT oid FROM this_database))
  AND (s.setrole = 0 OR s.setrole IN (SELECT oid FROM the_roles))

UNION ALL
-- Direct grants of role membership to or from the three roles, with their options (ADMIN, and on
-- PostgreSQL 16+ INHERIT and SET): every column of pg_auth_members but the ids and the grantor.
SELECT 'role_grant', format('role %I granted to %I', pg_get_userbyid(m.roleid), pg_get_userbyid(m.member)),
       jsonb_build_object('options', jsonb_agg(to_jsonb(m) - 'oid' - 'roleid' - 'member' - 'grantor'
                                               ORDER BY (to_jsonb(m) - 'oid' - 'roleid' - 'member' - 'grantor')))
FROM pg_auth_members m
WHERE m.roleid IN (SELECT oid FROM the_roles) OR m.member IN (SELECT oid FROM the_roles)
GROUP BY m.roleid, m.member

UNION ALL
-- Every role each of the three can become, directly or not, with INHERIT or without, predefined
-- roles included; and every role that can become one of them. Superusers are members of every
-- role, so they are left out as members (their attribute is what matters, and it is checked).
SELECT 'membership', x.object, '{}'::jsonb
FROM (SELECT format('%I is a member of %I', r.rolname, y.rolname) AS object
      FROM the_roles r JOIN pg_roles y ON y.oid <> r.oid
      WHERE NOT r.rolsuper AND pg_has_role(r.oid, y.oid, 'MEMBER')
      UNION
      SELECT format('%I is a member of %I', y.rolname, r.rolname)
      FROM the_roles r JOIN pg_roles y ON y.oid <> r.oid
      WHERE NOT y.rolsuper AND pg_has_role(y.oid, r.oid, 'MEMBER')) AS x

UNION ALL
SELECT 'database', 'this database',
       jsonb_build_object('owner', pg_get_userbyid(d.datdba),
                          'acl', taskapi_audit.acl_json(d.datacl, 'd', d.datdba))
FROM this_database d

UNION ALL
-- Default privileges decide what the objects of a future migration will grant.
SELECT 'default_privileges', i.type || ' ' || i.identity,
       jsonb_build_object('acl', taskapi_audit.acl_json(a.defaclacl, 'r', a.defaclrole))
FROM pg_default_acl a
CROSS JOIN LATERAL pg_identify_object('pg_default_acl'::regclass, a.oid, 0) AS i
WHERE a.defaclrole IN (SELECT oid FROM the_roles) OR a.defaclnamespace IN (SELECT oid FROM own_schemas)

UNION ALL
-- What the policies and functions above call without naming a schema resolves in pg_catalog: its
-- functions, operators and casts, as one digest of their whole catalog rows each (naming them one by
-- one costs more than the rest of the manifest); and, by name, who may run its restricted functions
-- (pg_read_binary_file() reads the table's files) and read its restricted relations (pg_statistic
-- holds sampled column values). An extension installed into pg_catalog changes these too: run
-- taskapi migrate after installing one.
SELECT 'catalog', 'functions of pg_catalog',
       jsonb_build_object('count', count(*), 'sha256',
                          encode(sha256(convert_to(string_agg(p::text, E'\n' ORDER BY p.oid), 'UTF8')), 'hex'))
FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace

UNION ALL
SELECT 'catalog', 'operators of pg_catalog',
       jsonb_build_object('count', count(*), 'sha256',
                          encode(sha256(convert_to(string_agg(o::text, E'\n' ORDER BY o.oid), 'UTF8')), 'hex'))
FROM pg_operator o WHERE o.oprnamespace = 'pg_catalog'::regnamespace

UNION ALL
SELECT 'catalog', 'casts',
       jsonb_build_object('count', count(*), 'sha256',
                          encode(sha256(convert_to(string_agg(c::text, E'\n' ORDER BY c.oid), 'UTF8')), 'hex'))
FROM pg_cast c

UNION ALL
SELECT 'catalog', 'privileges on functions of pg_catalog',
       coalesce(jsonb_object_agg(x.name, x.acl), '{}')
FROM (SELECT p.oid::regprocedure::text AS name, taskapi_audit.acl_json(p.proacl, 'f', p.proowner) AS acl,
             taskapi_audit.acl_json(NULL, 'f', p.proowner) AS default_acl
      FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proacl IS NOT NULL) AS x
WHERE x.acl <> x.default_acl

UNION ALL
SELECT 'catalog', 'privileges on relations of pg_catalog and information_schema',
       coalesce(jsonb_object_agg(x.name, x.acl), '{}')
FROM (SELECT c.oid::regclass::text AS name, taskapi_audit.acl_json(c.relacl, 'r', c.relowner) AS acl,
             taskapi_audit.acl_json(NULL, 'r', c.relowner) AS default_acl
      FROM pg_class c
      WHERE c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
        AND c.relacl IS NOT NULL) AS x
WHERE x.acl <> x.default_acl
$$;

COMMENT ON FUNCTION taskapi_audit.live_manifest() IS
    'the fingerprint of everything that defines isolation, from the catalogs (taskapi migrate records it)';
CREATE OR REPLACE FUNCTION taskapi_audit.findings()
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
-- Roles whose rights reach past the policies: superusers and BYPASSRLS roles (RLS does not apply),
-- CREATEROLE (it can grant itself such a role), REPLICATION (a base backup copies the data files),
-- the owner of the tables (it can switch RLS off), and the predefined roles that read or write server
-- files, run server programs, or read or write all data. A login role may become none of them, nor
-- any other predefined role; a SECURITY DEFINER function owned by one of them looks past RLS.
privileged_roles AS (
    SELECT x.*,
           x.rolsuper OR x.rolbypassrls OR x.rolcreaterole OR x.rolreplication OR x.owns_data
           OR x.rolname IN ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program',
                            'pg_read_all_data', 'pg_write_all_data') AS powerful,
           x.rolname LIKE 'pg\_%' AS predefined,
           coalesce(nullif(concat_ws(', ', CASE WHEN x.rolsuper THEN 'superuser' END,
                                     CASE WHEN x.rolbypassrls THEN 'BYPASSRLS' END,
                                     CASE WHEN x.rolcreaterole THEN 'CREATEROLE' END,
                                     CASE WHEN x.rolreplication THEN 'REPLICATION' END,
                                     CASE WHEN x.owns_data THEN 'owns the tables of schema taskapi' END), ''),
                    'a predefined role') AS why
    FROM (SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolreplication,
                 r.oid = (SELECT owner_id FROM role_ids)
                 OR EXISTS (SELECT 1 FROM data_tables t WHERE t.relowner = r.oid) AS owns_data
          FROM pg_roles r) AS x
),
ours AS (
    SELECT classid, objid FROM taskapi_audit.own_objects()
),
-- The manifest taskapi migrate recorded, against the live catalogs, row by row.
drift AS (
    SELECT coalesce(l.kind, m.kind) AS kind, coalesce(l.object, m.object) AS object,
           l.definition AS live, m.definition AS recorded
    FROM taskapi_audit.live_manifest() l
    FULL JOIN taskapi_audit.manifest m ON m.kind = l.kind AND m.object = l.object
    WHERE l.definition IS DISTINCT FROM m.definition
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
      -- A command the role holds no privilege for needs no policy (taskapi.task_counts grants no DELETE).
      AND has_table_privilege(to_regrole(c.rolname), t.oid, c.command)
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
    SELECT CASE WHEN r.rolname = 'taskapi_app' THEN 'runtime_role_member_of_privileged_role'
                ELSE 'auditor_member_of_privileged_role' END,
           'error', r.rolname,
           format('%I is a member of %I (%s), directly or not, with or without INHERIT: it can use that '
                  'role''s rights or SET ROLE to it', r.rolname, p.rolname, p.why),
           format('REVOKE %I FROM %I (or from the role through which it is a member; taskapi migrate revokes '
                  'taskapi_owner)', p.rolname, r.rolname)
    FROM (SELECT app_id AS oid, 'taskapi_app'::name AS rolname FROM role_ids
          UNION ALL SELECT auditor_id, 'taskapi_auditor' FROM role_ids) AS r
    JOIN privileged_roles p ON p.oid <> r.oid AND (p.powerful OR p.predefined)
    WHERE pg_has_role(r.oid, p.oid, 'MEMBER')

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
    WHERE o.relkind = 'v'
      AND NOT EXISTS (SELECT 1 FROM pg_options_to_table(o.reloptions) AS x
                      WHERE x.option_name = 'security_invoker'
                        AND lower(x.option_value) IN ('true', 'on', 'yes', '1'))

    UNION ALL
    SELECT 'materialized_view_in_schema', 'error', o.name,
           'a materialized view stores rows read with its owner''s rights; row-level security does not apply to it',
           format('DROP MATERIALIZED VIEW %s', o.name)
    FROM own_relations o WHERE o.relkind = 'm'

    UNION ALL
    SELECT 'foreign_table_in_schema', 'error', o.name,
           'a foreign table''s rows live in another server, where these policies do not apply',
           format('DROP FOREIGN TABLE %s', o.name)
    FROM own_relations o WHERE o.relkind = 'f'

    UNION ALL
    -- Who may touch the objects of the taskapi schemas at all: the three roles, nobody else. Another
    -- role granted SELECT on the table, a BYPASSRLS login for instance, reads past the policies, and
    -- the policy file's REVOKEs name only the three roles, so migrate would not take such a grant back.
    -- PUBLIC may run the schemas' invoker-rights functions (it reaches nothing through them).
    SELECT 'unexpected_grantee', 'error', x.object,
           format('grants %s to %s, which is not one of taskapi_owner, taskapi_app, taskapi_auditor',
                  string_agg(DISTINCT x.privilege_type, ', '), x.grantee_name),
           format('REVOKE ALL ON %s FROM %s', x.target, x.grantee_name)
    FROM (SELECT a.*, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
                      AS grantee_name
          FROM (SELECT format('SCHEMA %I', s.nspname) AS object, format('SCHEMA %I', s.nspname) AS target,
                       e.grantee, e.privilege_type, false AS is_function
                FROM own_schemas s JOIN pg_namespace n ON n.oid = s.oid
                CROSS JOIN LATERAL aclexplode(n.nspacl) AS e
                UNION ALL
                SELECT o.name, o.name, e.grantee, e.privilege_type, false
                FROM own_relations o JOIN pg_class c ON c.oid = o.oid CROSS JOIN LATERAL aclexplode(c.relacl) AS e
                UNION ALL
                SELECT format('column %s.%I', o.name, t.attname), o.name, e.grantee, e.privilege_type, false
                FROM own_relations o
                JOIN pg_attribute t ON t.attrelid = o.oid AND t.attnum > 0 AND NOT t.attisdropped
                CROSS JOIN LATERAL aclexplode(t.attacl) AS e
                UNION ALL
                SELECT format('function %s', f.name), format('FUNCTION %s', f.name), e.grantee, e.privilege_type, true
                FROM own_functions f JOIN pg_proc p ON p.oid = f.oid CROSS JOIN LATERAL aclexplode(p.proacl) AS e
               ) AS a
          WHERE a.grantee NOT IN ((SELECT owner_id FROM role_ids), (SELECT app_id FROM role_ids),
                                  (SELECT auditor_id FROM role_ids))
            AND NOT (a.is_function AND a.grantee = 0)) AS x
    GROUP BY x.object, x.target, x.grantee_name

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

    UNION ALL
    SELECT 'login_role_attribute', 'error', r.rolname,
           format('%I has %s: %s', r.rolname, a.attribute, a.why),
           format('ALTER ROLE %I NO%s, or run taskapi migrate', r.rolname, a.attribute)
    FROM pg_roles r
    CROSS JOIN LATERAL (VALUES
        ('CREATEROLE', r.rolcreaterole, 'it can create roles and grant itself roles that own the tables or '
                                        'bypass row-level security'),
        ('CREATEDB', r.rolcreatedb, 'it can create databases it owns, where it is a superuser''s equal'),
        ('REPLICATION', r.rolreplication, 'a replication connection copies the data files, every user''s '
                                          'rows included')) AS a(attribute, has, why)
    WHERE r.oid IN ((SELECT app_id FROM role_ids), (SELECT auditor_id FROM role_ids)) AND a.has

    UNION ALL
    -- The allow-list: anything that differs from what taskapi migrate recorded, by kind.
    SELECT d.kind || '_drift', 'error', d.object,
           CASE WHEN d.recorded IS NULL
                THEN 'not in the manifest: it appeared after taskapi migrate last ran'
                WHEN d.live IS NULL
                THEN 'in the manifest, and gone: it was dropped after taskapi migrate last ran'
                ELSE 'changed after taskapi migrate recorded it: '
                     || (SELECT string_agg(format('%s is %s, recorded %s', k.key,
                                                  left(coalesce(d.live -> k.key, 'null')::text, 300),
                                                  left(coalesce(d.recorded -> k.key, 'null')::text, 300)),
                                           '; ' ORDER BY k.key)
                         FROM (SELECT jsonb_object_keys(d.live) UNION SELECT jsonb_object_keys(d.recorded)) AS k(key)
                         WHERE d.live -> k.key IS DISTINCT FROM d.recorded -> k.key)
           END,
           'if the change is wanted, make it in a migration and run taskapi migrate (which records the '
           'manifest again); otherwise undo it: what was recorded is SELECT definition FROM '
           'taskapi_audit.manifest WHERE kind = ' || quote_literal(d.kind) || ' AND object = '
           || quote_literal(d.object)
    FROM drift d
    WHERE EXISTS (SELECT 1 FROM taskapi_audit.manifest)

    UNION ALL
    SELECT 'manifest_missing', 'error', 'taskapi_audit.manifest',
           'the manifest is empty, so nothing can be compared with what taskapi migrate installed',
           'run taskapi migrate (it records the manifest)'
    WHERE NOT EXISTS (SELECT 1 FROM taskapi_audit.manifest)

    UNION ALL
    -- Closure, whatever the manifest says: nothing outside the three schemas may depend on their
    -- objects. A view or materialized view (through its rewrite rule), a function with a SQL-standard
    -- body, a foreign key, an inheritance child or partition, a publication, extended statistics, a
    -- policy or trigger of another table...: each can read, copy or expose rows past the policies,
    -- whoever owns it. Kinds PostgreSQL adds later land here too.
    SELECT 'outside_dependent', 'error', x.object,
           format('depends on %s, but is not part of what taskapi installs: whatever reads or writes the '
                  'tables through it does so on its owner''s terms, not only the policies''', x.refs),
           'drop it, or make it part of taskapi in a migration'
    FROM (SELECT dep.type || ' ' || dep.identity AS object,
                 string_agg(DISTINCT ref.type || ' ' || ref.identity, ', ') AS refs
          FROM pg_depend d
          CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS dep
          CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) AS ref
          WHERE (d.refclassid, d.refobjid) IN (SELECT classid, objid FROM ours)
            AND (d.classid, d.objid) NOT IN (SELECT classid, objid FROM ours)
          GROUP BY 1) AS x

    UNION ALL
    -- ... and the objects of the three schemas may depend on nothing outside them but pg_catalog
    -- (and the languages their functions are written in): a table that inherits from or is a partition
    -- of another table, a trigger, default or policy that calls a function elsewhere, an object that
    -- belongs to an extension (which ALTER EXTENSION ... UPDATE may replace).
    SELECT 'outside_dependency', 'error', x.object,
           format('depends on %s, outside the schemas of taskapi and pg_catalog: changing that changes '
                  'what the tables do or who reads them', x.refs),
           format('remove the dependency on %s (restore what taskapi migrate installed)', x.refs)
    FROM (SELECT dep.type || ' ' || dep.identity AS object,
                 string_agg(DISTINCT ref.type || ' ' || ref.identity, ', ') AS refs
          FROM pg_depend d
          CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS dep
          CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) AS ref
          WHERE (d.classid, d.objid) IN (SELECT classid, objid FROM ours)
            AND (d.refclassid, d.refobjid) NOT IN (SELECT classid, objid FROM ours)
            AND NOT (d.refclassid = 'pg_namespace'::regclass AND d.refobjid IN (SELECT oid FROM own_schemas))
            AND d.refclassid <> 'pg_language'::regclass
            AND (ref.schema IS DISTINCT FROM 'pg_catalog' OR d.deptype IN ('e', 'x'))
          GROUP BY 1) AS x

    UNION ALL
    -- Functions with string bodies record no dependencies, so a SECURITY DEFINER function anywhere is
    -- a way past the policies when its owner's rights reach past them and a login role may call it
    -- (EXECUTE is granted to PUBLIC by default). Those of the taskapi schemas are checked above.
    SELECT 'security_definer_reachable', 'error', 'function ' || p.oid::regprocedure::text,
           format('a SECURITY DEFINER function owned by %I, whose rights reach past row-level security, '
                  'and %s may run it', pg_get_userbyid(p.proowner),
                  concat_ws(' and ', CASE WHEN has_function_privilege((SELECT app_id FROM role_ids), p.oid, 'EXECUTE')
                                          THEN 'taskapi_app' END,
                            CASE WHEN has_function_privilege((SELECT auditor_id FROM role_ids), p.oid, 'EXECUTE')
                                 THEN 'taskapi_auditor' END)),
           format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, taskapi_app, taskapi_auditor; or make it '
                  'SECURITY INVOKER; or drop it', p.oid::regprocedure)
    FROM pg_proc p
    WHERE p.prosecdef AND p.pronamespace NOT IN (SELECT oid FROM own_schemas)
      AND (has_function_privilege((SELECT app_id FROM role_ids), p.oid, 'EXECUTE')
           OR has_function_privilege((SELECT auditor_id FROM role_ids), p.oid, 'EXECUTE'))
      AND EXISTS (SELECT 1 FROM privileged_roles w WHERE w.powerful AND pg_has_role(p.proowner, w.oid, 'MEMBER'))

    UNION ALL
    -- Foreign data: a user mapping carries credentials for another server (this one included) that
    -- its user, or a view its user owns, reads with; a foreign table a login role may use reads rows
    -- that no policy here governs.
    SELECT 'foreign_data_reachable', 'error', x.object, x.detail, x.remedy
    FROM (SELECT format('user mapping for %s on server %I', m.usename, m.srvname) AS object,
                 'credentials for another server (perhaps this one) that queries run as this role, or '
                 'through a view it owns, connect with' AS detail,
                 format('DROP USER MAPPING FOR %s SERVER %I', m.usename, m.srvname) AS remedy
          FROM pg_user_mappings m
          WHERE m.umuser = 0
             OR m.umuser IN ((SELECT app_id FROM role_ids), (SELECT auditor_id FROM role_ids))
             OR EXISTS (SELECT 1 FROM privileged_roles w WHERE w.powerful AND pg_has_role(m.umuser, w.oid, 'MEMBER'))
          UNION ALL
          SELECT format('server %I', s.srvname), 'a login role may use this foreign server',
                 format('REVOKE USAGE ON FOREIGN SERVER %I FROM PUBLIC, taskapi_app, taskapi_auditor', s.srvname)
          FROM pg_foreign_server s
          WHERE has_server_privilege((SELECT app_id FROM role_ids), s.oid, 'USAGE')
             OR has_server_privilege((SELECT auditor_id FROM role_ids), s.oid, 'USAGE')
          UNION ALL
          SELECT format('foreign table %s', c.oid::regclass), 'a login role may read or write this foreign table',
                 format('REVOKE ALL ON %s FROM PUBLIC, taskapi_app, taskapi_auditor', c.oid::regclass)
          FROM pg_class c
          WHERE c.relkind = 'f'
            AND (has_table_privilege((SELECT app_id FROM role_ids), c.oid, 'SELECT, INSERT, UPDATE, DELETE')
                 OR has_table_privilege((SELECT auditor_id FROM role_ids), c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
         ) AS x

    UNION ALL
    -- Logical replication sends every row of a published table to the subscriber, past RLS.
    SELECT 'publication_includes_data', 'error', format('publication %I', p.pubname),
           CASE WHEN p.puballtables THEN 'publishes every table of the database, the tasks included'
                ELSE 'publishes tables of the taskapi schemas' END
           || ': a subscriber receives every user''s rows',
           format('DROP PUBLICATION %I, or leave the taskapi tables out of it', p.pubname)
    FROM pg_publication p
    WHERE p.puballtables
       OR EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                  WHERE r.prpubid = p.oid AND c.relnamespace IN (SELECT oid FROM own_schemas))
       OR EXISTS (SELECT 1 FROM pg_publication_namespace n
                  WHERE n.pnpubid = p.oid AND n.pnnspid IN (SELECT oid FROM own_schemas))

    UNION ALL
    -- A search_path set for this database or the three roles (ALTER DATABASE/ROLE ... SET) that names
    -- a schema other than pg_catalog, pg_temp and taskapi's: whoever may create objects there can
    -- plant a function or operator that better matches what an unqualified call names, and it runs
    -- with the caller's rights (CVE-2018-1058). The API and migrate pin their own search_path; psql
    -- sessions of the auditor, and any other client, do not.
    SELECT 'search_path_setting', 'error',
           CASE WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'settings of every role in every database'
                WHEN s.setrole = 0 THEN 'settings of this database'
                WHEN s.setdatabase = 0 THEN format('settings of role %I in every database', pg_get_userbyid(s.setrole))
                ELSE format('settings of role %I in this database', pg_get_userbyid(s.setrole)) END,
           format('sets %s: a schema on it other than pg_catalog, pg_temp and taskapi''s lets whoever may '
                  'create objects there stand in for the functions and operators unqualified SQL calls', c.setting),
           CASE WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'ALTER ROLE ALL RESET search_path'
                WHEN s.setrole = 0 THEN format('ALTER DATABASE %I RESET search_path', current_database())
                WHEN s.setdatabase = 0 THEN format('ALTER ROLE %I RESET search_path', pg_get_userbyid(s.setrole))
                ELSE format('ALTER ROLE %I IN DATABASE %I RESET search_path', pg_get_userbyid(s.setrole),
                            current_database()) END
    FROM pg_db_role_setting s
    CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
    WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
      AND (s.setrole = 0 OR s.setrole IN ((SELECT owner_id FROM role_ids), (SELECT app_id FROM role_ids),
                                          (SELECT auditor_id FROM role_ids)))
      AND c.setting LIKE 'search_path=%'
      AND EXISTS (SELECT 1 FROM unnest(string_to_array(substr(c.setting, 13), ',')) AS p(name)
                  WHERE btrim(p.name, ' "') NOT IN ('pg_catalog', 'pg_temp', 'taskapi', 'taskapi_audit',
                                                    'taskapi_meta', ''))

    UNION ALL
    -- An event trigger runs its function inside every DDL statement, taskapi migrate's included: it
    -- can rewrite the policies and the manifest as migrate installs them.
    SELECT 'event_trigger_present', 'error', format('event trigger %I', e.evtname),
           format('runs %s on %s inside every matching DDL statement, taskapi migrate''s included',
                  e.evtfoid::regprocedure, e.evtevent),
           format('DROP EVENT TRIGGER %I (or ALTER EVENT TRIGGER %I DISABLE)', e.evtname, e.evtname)
    FROM pg_event_trigger e WHERE e.evtenabled <> 'D'
)
SELECT "check", severity, object, detail, remedy
FROM problems
ORDER BY severity = 'warning', "check", object, detail
$$;

COMMENT ON FUNCTION taskapi_audit.findings() IS
    'no rows when the isolation posture of schema taskapi holds; else one row per problem (docs/audit.md)';

-- The auditor reads the manifest and runs both functions; the runtime role runs findings() for the
-- posture guard, which needs what findings() reads. Nobody but taskapi_owner writes here.
REVOKE ALL ON taskapi_audit.manifest FROM PUBLIC;
REVOKE ALL ON FUNCTION taskapi_audit.live_manifest(), taskapi_audit.own_objects(),
                       taskapi_audit.acl_json(aclitem[], "char", oid) FROM PUBLIC;
GRANT SELECT ON taskapi_audit.manifest TO taskapi_auditor, taskapi_app;
GRANT EXECUTE ON FUNCTION taskapi_audit.live_manifest(), taskapi_audit.own_objects(),
                          taskapi_audit.acl_json(aclitem[], "char", oid) TO taskapi_auditor, taskapi_app;
