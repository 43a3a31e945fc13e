"""Settings read once from the environment; a wrong value fails with one line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output, 256 bits.
MIN_SECRET_BYTES = 32
# How often the posture guard re-runs taskapi_audit.findings() (api/posture.py): a check costs tens of
# milliseconds of one connection (docs/audit.md, "Cost"), so every 2 s keeps "closed within two
# checks" to a few seconds.
DEFAULT_POSTURE_CHECK_S = 2.0


class ConfigError(Exception):
    """A setting is missing or malformed; ``str(exc)`` is the one line to print."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `taskapi serve` needs; see the README's configuration table."""

    database_url: str
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_jwks_url: str | None = None
    jwt_jwks_ttl_s: float = 300.0
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: int = 30
    cors_origins: tuple[str, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    db_pool_size: int = 8
    db_timeout_s: float = 2.0
    db_statement_timeout_ms: int = 5000
    db_pooler: str = "session"
    db_max_waiting: int | None = None  # None: sized from the measured rate (api/admission.py)
    http_read_timeout_s: float = 5.0
    http_keepalive_s: float = 60.0
    max_connections: int = 8192
    metrics_port: int | None = None  # None: no metrics (api/metrics.py)
    metrics_host: str = DEFAULT_HOST
    posture_check_s: float = DEFAULT_POSTURE_CHECK_S
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_database: bool = True) -> Settings:
        """Read and validate every setting; raise `ConfigError` naming the first bad one."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        database_url = reader.text("DATABASE_URL")
        if require_database and not database_url:
            raise ConfigError("DATABASE_URL is not set: give the runtime DSN (role taskapi_app)")
        secret = jwt_secret_from_env(env)
        if secret:
            require_strong_secret(secret, env)
        jwks_url = reader.text("JWT_JWKS_URL")
        if not secret and not jwks_url:
            raise ConfigError("no token verification configured: set JWT_SECRET (or BETTER_AUTH_SECRET) "
                              "and/or JWT_JWKS_URL")
        if jwks_url and not jwks_url.startswith(("http://", "https://")):
            raise ConfigError("JWT_JWKS_URL must be an http:// or https:// URL")
        pooler = reader.text("DB_POOLER") or "session"
        if pooler not in ("session", "transaction"):
            raise ConfigError("DB_POOLER must be 'session' or 'transaction'")
        origins = tuple(o.strip().rstrip("/") for o in reader.text("CORS_ORIGINS").split(",") if o.strip())
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS_ORIGINS entry {origin!r} is not an http(s) origin")
        level = (reader.text("LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        pool_size = int(reader.number("DB_POOL_SIZE", 8, low=1, high=1000, integer=True))
        return cls(
            database_url=database_url,
            jwt_secret=secret or None,
            jwt_jwks_url=jwks_url or None,
            jwt_jwks_ttl_s=reader.number("JWT_JWKS_TTL_S", 300.0, low=1),
            jwt_issuer=reader.text("JWT_ISSUER") or None,
            jwt_audience=reader.text("JWT_AUDIENCE") or None,
            jwt_leeway_s=int(reader.number("JWT_LEEWAY_S", 30, low=0, high=3600, integer=True)),
            cors_origins=origins,
            host=reader.text("HOST") or DEFAULT_HOST,
            port=int(reader.number("PORT", DEFAULT_PORT, low=0, high=65535, integer=True)),
            workers=int(reader.number("WORKERS", 1, low=1, high=64, integer=True)),
            db_pool_size=pool_size,
            db_timeout_s=reader.number("DB_TIMEOUT_S", 2.0, low=0.1, high=300),
            db_statement_timeout_ms=int(
                reader.number("DB_STATEMENT_TIMEOUT_MS", 5000, low=1, high=3_600_000, integer=True)),
            db_pooler=pooler,
            db_max_waiting=reader.optional_int("DB_MAX_WAITING", low=1, high=100_000),
            http_read_timeout_s=reader.number("HTTP_READ_TIMEOUT_S", 5.0, low=0.5, high=300),
            # granian accepts at most 60 s for its header read timeout.
            http_keepalive_s=reader.number("HTTP_KEEPALIVE_S", 60.0, low=1, high=60),
            max_connections=int(reader.number("MAX_CONNECTIONS", 8192, low=16, high=1_000_000, integer=True)),
            metrics_port=reader.optional_int("METRICS_PORT", low=1, high=65535),
            metrics_host=reader.text("METRICS_HOST") or DEFAULT_HOST,
            posture_check_s=reader.number("POSTURE_CHECK_S", DEFAULT_POSTURE_CHECK_S, low=0.1, high=86400),
            shutdown_grace_s=reader.number("SHUTDOWN_GRACE_S", 10.0, low=0, high=3600),
            log_level=level,
        )


def jwt_secret_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """JWT_SECRET, else BETTER_AUTH_SECRET (the name Better Auth frontends use); used verbatim."""
    env = os.environ if env is None else env
    return env.get("JWT_SECRET") or env.get("BETTER_AUTH_SECRET") or None


def require_strong_secret(secret: str, env: Mapping[str, str] | None = None) -> None:
    """Raise `ConfigError` when `secret` is too short to be an HS256 key (RFC 7518 section 3.2)."""
    env = os.environ if env is None else env
    length = len(secret.encode("utf-8", "surrogateescape"))
    if length < MIN_SECRET_BYTES:
        name = "JWT_SECRET" if env.get("JWT_SECRET") else "BETTER_AUTH_SECRET"
        raise ConfigError(f"{name} is {length} bytes; an HS256 secret must be at least {MIN_SECRET_BYTES} bytes "
                          "(RFC 7518 section 3.2): generate one with `openssl rand -base64 32`")


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str:
        return self._env.get(name, "").strip()

    def optional_int(self, name: str, *, low: int, high: int) -> int | None:
        """The integer `name`, or None when it is unset."""
        return int(self.number(name, 0, low=low, high=high, integer=True)) if self.text(name) else None

    def number(self, name: str, default: float, *, low: float, high: float | None = None,
               integer: bool = False) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{name}={raw!r} is not {kind}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"{name}={raw!r} must be {bounds}")
        return value
