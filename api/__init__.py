"""taskapi: a task API whose user isolation is enforced by PostgreSQL row-level security."""

# The contract's version (docs/CONTRACT.md, v1.2) as a release number; also the OpenAPI info.version.
__version__ = "1.2.0"
