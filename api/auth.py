"""Bearer token → verified user id (`sub`). Every 401 reason lives here.

Which key checks a token follows from its header's `alg`, never from anything else in it: HS256
tokens are checked only against the shared secret, asymmetric ones only against a key source (the
JWKS of issue #3), so a public key can never be used as an HMAC secret. Verified tokens are cached
until they expire, so a client that sends the same token repeatedly pays for one verification.

Every token gets a 401, never a 500 (issue #9): the header and the claims the verifier relies on are
checked for their JSON type and range explicitly, and any other exception raised while verifying a
token (whatever a library does with a value it did not expect) is a refusal too, logged at DEBUG
without the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import jwt
from jwt.types import Options
from litestar import Request

from .config import Settings
from .errors import AuthUnavailable, Unauthorized

log = logging.getLogger("taskapi.auth")

MAX_TOKEN_LENGTH = 8192
MAX_SUB_LENGTH = 255
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
# A bounded cache of verified tokens; past this size the oldest entry makes room (FIFO), so memory
# stays bounded (~3 MB) and a burst of new tokens costs the oldest ones a re-verification only.
TOKEN_CACHE_SIZE = 10_000
# Time claims (exp, nbf, iat) must be numbers of seconds below this (year 2255), so arithmetic on
# them stays exact and finite.
MAX_TIMESTAMP = 2**33


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified user a request acts for: the token's `sub`."""

    id: str


# Where the gate (api/app.py) leaves the caller for the handlers (`current_caller`) and the access log
# (`caller_of`): the request's own ASGI scope, which no other request shares. Only these three
# functions touch the key.
_CALLER_KEY = "taskapi.caller"


def bind_caller(scope: Mapping[str, Any], caller: Caller) -> None:
    """Record the verified caller of the request whose scope this is."""
    cast("dict[str, Any]", scope)[_CALLER_KEY] = caller


def caller_of(scope: Mapping[str, Any]) -> Caller | None:
    """The verified caller of this request, or None before (or without) authentication."""
    caller = scope.get(_CALLER_KEY)
    return caller if isinstance(caller, Caller) else None


def current_caller(request: Request[Any, Any, Any]) -> Caller:
    """The `caller` dependency of every /api handler; the gate has always bound one by then."""
    caller = caller_of(request.scope)
    if caller is None:
        raise RuntimeError("an /api handler ran without the authentication gate")
    return caller


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key and the algorithms a token signed with it may name."""

    key: Any
    algorithms: frozenset[str]


class KeySource(Protocol):
    """Where public keys come from (a JWKS, see `api.jwks`)."""

    async def key_for(self, kid: str) -> PublicKey | None:
        """The key named `kid`, or None when the source has no such key.

        Raises `AuthUnavailable` when the key is not at hand and the source cannot be reached.
        """
        ...


class Verifier:
    """Checks `Authorization` headers against the configured secret and/or key source."""

    def __init__(self, settings: Settings, key_source: KeySource | None = None) -> None:
        self._secret = settings.jwt_secret.encode() if settings.jwt_secret else None
        self._key_source = key_source
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s
        self._options: Options = {
            "require": ["exp", "sub"],
            # aud is checked only when JWT_AUDIENCE is set: Better Auth always sends one.
            "verify_aud": settings.jwt_audience is not None,
        }
        self._cache: dict[str, tuple[str, float]] = {}

    async def user_id(self, authorization: str | None) -> str:
        """Return the verified `sub` for this header value; raise `Unauthorized` otherwise."""
        token = _bearer_token(authorization)
        cached = self._cache.get(token)
        if cached is not None:
            sub, expires = cached
            if time.time() < expires:
                return sub
            del self._cache[token]
        sub, exp = await self._verify(token)
        if len(self._cache) >= TOKEN_CACHE_SIZE:
            del self._cache[next(iter(self._cache))]  # dicts keep insertion order: this is the oldest
        self._cache[token] = (sub, exp + self._leeway)
        return sub

    async def _verify(self, token: str) -> tuple[str, float]:
        """The verified `(sub, exp)` of `token`; raise `Unauthorized` (or `AuthUnavailable`) otherwise."""
        try:
            return await self._verify_strictly(token)
        except (Unauthorized, AuthUnavailable):
            raise
        except Exception as exc:  # a value no check above foresaw: still a bad token, never a 500
            log.debug("token refused: %s while verifying it", type(exc).__name__)
            raise Unauthorized("token invalid") from None

    async def _verify_strictly(self, token: str) -> tuple[str, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Unauthorized("token algorithm not accepted")
        if not all(isinstance(header.get(name, ""), str) for name in ("typ", "cty", "kid")):
            raise Unauthorized("malformed token header")
        if "crit" in header:
            # RFC 7515 section 4.1.11: extensions the verifier must understand; it understands none.
            raise Unauthorized("token header names critical extensions")
        if alg in SYMMETRIC_ALGORITHMS and self._secret is not None:
            key: Any = self._secret
        elif alg in ASYMMETRIC_ALGORITHMS and self._key_source is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid or not _is_text(kid):
                raise Unauthorized("token has no kid")
            public = await self._key_source.key_for(kid)
            if public is None:
                raise Unauthorized("token kid is not in the JWKS")
            if alg not in public.algorithms:
                raise Unauthorized("token algorithm does not match its key")
            key = public.key
        else:
            raise Unauthorized("token algorithm not accepted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options=self._options, leeway=self._leeway,
                                issuer=self._issuer, audience=self._audience)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token has no {exc.claim}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience not accepted") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature invalid") from None
        except jwt.PyJWTError:
            raise Unauthorized("token invalid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or "\x00" in sub or not _is_text(sub):
            raise Unauthorized("token sub must be a string of 1 to 255 characters")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_timestamp(claims[name]):
                raise Unauthorized(f"token {name} must be a number of seconds")
        # RFC 7519 section 4.1: the registered claims have these types, checked or not.
        aud = claims.get("aud", "")
        if (not isinstance(claims.get("iss", ""), str) or not isinstance(claims.get("jti", ""), str)
                or not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud)))):
            raise Unauthorized("token claims of the wrong type")
        return sub, float(claims["exp"])


def _is_timestamp(value: object) -> bool:
    # bool is an int to Python, never a time to JSON; NaN and the infinities compare False. (An int
    # too large for a float compares fine here, where float() or math.isfinite() would raise.)
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < MAX_TIMESTAMP


def _is_text(value: str) -> bool:
    """Whether `value` is valid Unicode text: JSON's \\ud800 escapes decode to lone surrogates, which
    no UTF-8 encoder (the log line, the database driver) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing bearer token", token_sent=False)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("authorization scheme must be Bearer", token_sent=False)
    token = token.strip()
    if not token:
        raise Unauthorized("missing bearer token", token_sent=False)
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("token too long")
    return token


def mint_token(secret: str, sub: str, *, ttl_s: int = 3600, extra: dict[str, Any] | None = None) -> str:
    """An HS256 token for `taskapi token` and `taskapi dev` (manual testing only)."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + ttl_s, **(extra or {})}
    return jwt.encode(claims, secret, algorithm="HS256")
