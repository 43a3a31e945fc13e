"""Public keys from a JWKS URL (Better Auth's `/api/auth/jwks`): fetched, cached, refreshed."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from . import __version__
from .auth import PublicKey
from .errors import AuthUnavailable

log = logging.getLogger("taskapi.jwks")

# Each network wait of a fetch times out after FETCH_TIMEOUT_S, and reading the body stops once the
# fetch has taken that long, so one fetch lasts a few seconds at most; a larger JWKS is refused.
FETCH_TIMEOUT_S = 3.0
MAX_JWKS_BYTES = 256 * 1024
# A token naming an unknown kid triggers a fetch at most this often: random kids cannot turn the API
# into a JWKS flooder, and a rotated key is still picked up on its first use (issue #3).
MIN_REFETCH_INTERVAL_S = 5.0
# The background refresh runs at this fraction of JWT_JWKS_TTL_S, so that a refresh, even a slow one,
# lands before the keys are TTL old; after a failed fetch it tries again every RETRY_FAILED_S instead.
REFRESH_FRACTION = 0.8
RETRY_FAILED_S = 10.0

# The algorithms a JWK without an `alg` member accepts, by (kty, crv); a declared `alg` must be one of
# these too, so a key can never be used with an algorithm its type was not made for.
IMPLIED_ALGORITHMS: dict[tuple[str, str | None], frozenset[str]] = {
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("RSA", None): frozenset({"RS256", "PS256"}),
}


class JwksKeys:
    """The `KeySource` of a JWKS URL: an in-memory `kid → PublicKey` map, kept fresh.

    `start()` fetches once and starts the background refresh; `close()` stops it. Every fetch goes
    through one shared task, so concurrent callers wait for the same download.
    """

    def __init__(self, url: str, *, ttl_s: float, on_fetch: Callable[[bool], None] | None = None) -> None:
        self._url = url
        self._on_fetch = on_fetch  # told of every download, True when it succeeded (api/metrics.py)
        self._refresh_every = ttl_s * REFRESH_FRACTION
        self._keys: dict[str, PublicKey] = {}
        self._reachable = False  # did the latest fetch succeed?
        self._refresh_at = 0.0  # monotonic time of the next background fetch
        self._next_demand_fetch = 0.0  # monotonic time before which an unknown kid fetches nothing
        self._fetch_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fetch the JWKS once (a failure is logged, not raised) and start refreshing it."""
        await self._fetch()
        self._refresh_task = asyncio.create_task(self._refresh_forever(), name="taskapi-jwks-refresh")

    async def close(self) -> None:
        """Cancel the background refresh and any fetch in flight; return once they have stopped."""
        for task in (self._refresh_task, self._fetch_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._refresh_task = self._fetch_task = None

    async def key_for(self, kid: str) -> PublicKey | None:
        """The key for `kid`, or None when the JWKS (fetched now if `kid` is unknown) has no such key.

        Raises `AuthUnavailable` when `kid` is not cached and the JWKS cannot be fetched.
        """
        key = self._keys.get(kid)
        if key is not None:
            return key  # the hot path: a dict lookup, no task, no thread
        if self._fetch_task is not None or self._take_demand_fetch():
            await self._fetch()
            key = self._keys.get(kid)
        if key is None and not self._reachable:
            raise AuthUnavailable()
        return key

    def _take_demand_fetch(self) -> bool:
        now = time.monotonic()
        if now < self._next_demand_fetch:
            return False
        self._next_demand_fetch = now + MIN_REFETCH_INTERVAL_S
        return True

    async def _fetch(self) -> None:
        # shield: a request that is cancelled (client gone) must not cancel the download others await.
        if self._fetch_task is None:
            self._fetch_task = asyncio.create_task(self._load(), name="taskapi-jwks-fetch")
        await asyncio.shield(self._fetch_task)

    async def _load(self) -> None:
        try:
            body = await asyncio.to_thread(_download, self._url)
            keys = parse_jwks(body)
        except (OSError, ValueError, RecursionError, http.client.HTTPException) as exc:
            if self._on_fetch is not None:
                self._on_fetch(False)
            self._reachable = False
            self._refresh_at = time.monotonic() + min(RETRY_FAILED_S, self._refresh_every)
            log.warning("JWKS %s unreachable (%s); until it answers only the %d cached keys are accepted and "
                        "tokens naming another kid get 503", self._url, _reason(exc), len(self._keys))
        else:
            if self._on_fetch is not None:
                self._on_fetch(True)
            if keys.keys() != self._keys.keys() or not self._reachable:
                log.info("JWKS %s: key ids %s", self._url, ", ".join(sorted(keys)) or "(none)")
            self._keys = keys
            self._reachable = True
            self._refresh_at = time.monotonic() + self._refresh_every
        finally:
            self._fetch_task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._refresh_at - time.monotonic()))
            if time.monotonic() >= self._refresh_at:  # else a request's fetch already refreshed
                await self._fetch()


def parse_jwks(body: bytes) -> dict[str, PublicKey]:
    """The usable signing keys of a JWKS document by kid; raise `ValueError` if it is not a JWKS.

    Keys without a kid, for another use, of an unsupported type, with an `alg` their type does not
    allow, or carrying private material are left out (and logged), not fatal: the others still work.
    """
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no keys list)")
    keys: dict[str, PublicKey] = {}
    for jwk in document["keys"]:
        try:
            kid, key = _public_key(jwk)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            named = jwk.get("kid") if isinstance(jwk, dict) else None
            log.warning("JWKS key %r ignored: %s", named, exc)
            continue
        keys[kid] = key
    return keys


def _public_key(jwk: Any) -> tuple[str, PublicKey]:
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use is {jwk.get('use')!r}, not 'sig'")
    if "d" in jwk:
        raise ValueError("it holds a private key; it must not be published")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if not isinstance(kty, str) or not (crv is None or isinstance(crv, str)):
        raise ValueError("kty and crv must be strings")
    implied = IMPLIED_ALGORITHMS.get((kty, None if kty == "RSA" else crv))
    if implied is None:
        raise ValueError(f"unsupported key type {kty!r} {jwk.get('crv', '')}".rstrip())
    declared = jwk.get("alg")
    if declared is not None and declared not in implied:
        raise ValueError(f"alg {declared!r} does not fit a {kty} key")
    # PyJWK builds the key object and refuses malformed key material.
    return kid, PublicKey(jwt.PyJWK(jwk).key, implied if declared is None else frozenset({declared}))


def _download(url: str) -> bytes:
    # Runs in a worker thread. The socket timeout bounds each read; the deadline bounds the whole
    # download, so a server trickling bytes cannot hold the thread for long either.
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    request = urllib.request.Request(url, headers={"Accept": "application/json",  # noqa: S310 (http(s) only)
                                                   "User-Agent": f"taskapi/{__version__}"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(64 * 1024):
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES // 1024} KiB")
            if time.monotonic() > deadline:
                raise TimeoutError(f"JWKS download took over {FETCH_TIMEOUT_S:g} s")
            chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
