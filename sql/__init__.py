"""taskapi's SQL, installed as the package `api.sql` (see pyproject.toml); read by api/migrate.py."""
