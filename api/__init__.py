"""taskapi: a task API whose user isolation is enforced by PostgreSQL row-level security."""

__version__ = "1.0.0"
