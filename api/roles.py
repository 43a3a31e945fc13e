"""Is the runtime role fit to serve? The start-up check of `taskapi serve` and of the pool.

CONTRACT.md section 6: the API refuses to start when its role could get past row-level security.
The check covers what ``taskapi_audit.findings()`` checks about the runtime role (issue #9): its
attributes, and every role it can become, directly or not, with INHERIT or without, predefined roles
included. It runs as the runtime role before the posture guard exists, so it calls no function of
the database it is checking: only pg_catalog, schema-qualified, operators included, so that no
``search_path`` set on the database or the role can put an object of someone else's in their place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import LiteralString

# One row per reason this role must not serve, most fundamental first; no row when it is fit. The
# runtime role may be a member of no role at all: whatever a membership gives, the role would have
# more than the policies allow for, and a default install records none (the manifest's `membership`).
CHECK_RUNTIME_ROLE: LiteralString = """
    WITH me AS (
        SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolreplication
        FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
    )
    SELECT x.rank, x.problem FROM (
        SELECT 1 AS rank, 'is a superuser, which bypasses row-level security' AS problem FROM me WHERE me.rolsuper
        UNION ALL SELECT 2, 'has BYPASSRLS' FROM me WHERE me.rolbypassrls
        UNION ALL SELECT 3, 'has CREATEROLE: it could grant itself a role that bypasses row-level security'
                  FROM me WHERE me.rolcreaterole
        UNION ALL SELECT 4, 'has REPLICATION: a replication connection copies every user''s rows'
                  FROM me WHERE me.rolreplication
        UNION ALL SELECT 5, 'has CREATEDB' FROM me WHERE me.rolcreatedb
        UNION ALL SELECT 6, 'cannot find its own attributes in pg_roles' WHERE NOT EXISTS (SELECT 1 FROM me)
        UNION ALL SELECT 7, 'migrated'
                  WHERE pg_catalog.to_regclass('taskapi.tasks') IS NULL
        UNION ALL SELECT 8, 'owns taskapi.tasks and could disable its policies'
                  FROM pg_catalog.pg_class c, me
                  WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('taskapi.tasks')
                    AND c.relowner OPERATOR(pg_catalog.=) me.oid
        UNION ALL SELECT 9, pg_catalog.format('is a member of %I, so it can use that role''s rights or SET ROLE to it',
                                              o.rolname)
                  FROM pg_catalog.pg_roles o, me
                  WHERE NOT me.rolsuper AND o.oid OPERATOR(pg_catalog.<>) me.oid
                    AND pg_catalog.pg_has_role(me.oid, o.oid, 'MEMBER')
    ) AS x
    ORDER BY x.rank, x.problem
"""


class RoleUnfit(Exception):
    """The runtime role could get past row-level security; ``str(exc)`` is a one-line reason."""


def role_problem(rows: Sequence[tuple[int, str]], role: str) -> str | None:
    """The one-line reason this role must not serve, from the rows of `CHECK_RUNTIME_ROLE`, or None."""
    if not rows:
        return None
    _, problem = rows[0]
    if problem == "migrated":
        return "refusing to start: table taskapi.tasks does not exist; run `taskapi migrate` first"
    others = f" (and {len(rows) - 1} more problem(s))" if len(rows) > 1 else ""
    return f"refusing to start: database role {role} {problem}{others}"
