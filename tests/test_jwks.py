"""Asymmetric tokens checked against a JWKS (issue #3): a local JWKS endpoint, real `taskapi serve` processes.

The session server (`api`) has JWT_JWKS_URL, JWT_ISSUER, JWT_AUDIENCE and JWT_SECRET; tests that
depend on what the server has fetched so far (rotation, outages, bursts) start a server of their own,
so the unknown-kid rate limit of one test never decides another.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from api.auth import mint_token
from conftest import JWT_SECRET, Database, Server, server_env

ISSUER = AUDIENCE = "http://localhost:3000"  # Better Auth's defaults for a frontend on that origin
POLL_DEADLINE_S = 15


# --- keys and tokens -----------------------------------------------------------------------------

@dataclass
class SigningKey:
    """A private key the tests sign with, and the public JWK the JWKS endpoint serves for it."""

    alg: str
    private: Any
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    def token(self, sub: str | None = None, *, alg: str | None = None, kid: str | None = "same",
              **claims: Any) -> str:
        """A token like Better Auth's (iss, aud, 15 min, name, email); `claims` override or add."""
        now = int(time.time())
        payload = {"sub": sub or new_sub(), "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 900,
                   "name": "Test User", "email": "test@example.com", **claims}
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=headers)

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def signing_key(alg: str, *, declare_alg: bool = True) -> SigningKey:
    """A new key for `alg`; its JWK names the algorithm unless `declare_alg` is false."""
    if alg == "EdDSA":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    elif alg in ("ES256", "ES512"):
        private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP521R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = get_default_algorithms()[alg].to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=uuid.uuid4().hex, use="sig")
    if declare_alg:
        jwk["alg"] = alg
    return SigningKey(alg, private, jwk)


def new_sub() -> str:
    return uuid.uuid4().hex  # 32 alphanumeric characters, like a Better Auth user id


def forged_hs256(key: SigningKey, secret: bytes) -> str:
    """An HS256 token whose HMAC secret is public key material (pyjwt itself refuses to make one)."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    payload = {"sub": new_sub(), "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 900}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tampered(token: str) -> str:
    """The same header and signature over a payload whose `sub` was changed."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = new_sub()
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the JWKS endpoint ---------------------------------------------------------------------------

@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1: serves `keys`, answers 503 while `down`, counts fetches.

    While `hold` is set to an unset event, each fetch waits for it before answering.
    """

    keys: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    hold: threading.Event | None = None
    fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> JwksServer:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with jwks._lock:
                    jwks.fetches += 1
                if jwks.hold is not None:
                    jwks.hold.wait(timeout=POLL_DEADLINE_S)
                if jwks.down:
                    self._send(503, b'{"error": "down"}')
                else:
                    self._send(200, json.dumps({"keys": list(jwks.keys)}).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/api/auth/jwks"

    def publish(self, *keys: SigningKey) -> None:
        self.keys = [*self.keys, *(key.jwk for key in keys)]

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self._http.shutdown()
        self._http.server_close()


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """The keys the session JWKS publishes, by name."""
    return {
        "EdDSA": signing_key("EdDSA"),
        "ES256": signing_key("ES256"),
        "RS256": signing_key("RS256"),
        "RSA no alg": signing_key("RS256", declare_alg=False),
        "P-521 no alg": signing_key("ES512", declare_alg=False),
    }


@pytest.fixture(scope="session")
def jwks(keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(*keys.values())
    server.start()
    yield server
    server.stop()


def jwks_env(database: Database, url: str, **extra: str) -> dict[str, str]:
    """A test server's environment with the JWKS, issuer and audience of a Better Auth frontend."""
    return server_env(database, JWT_JWKS_URL=url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE, **extra)


@pytest.fixture(scope="session")
def api(database: Database, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of a server that accepts both the JWKS keys and HS256 tokens."""
    server = Server(env=jwks_env(database, jwks.url), log_path=tmp_path_factory.mktemp("jwks") / "serve.log")
    server.start()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        client.server = server  # type: ignore[attr-defined]
        yield client
    server.stop()


@pytest.fixture
def start_api(database: Database, tmp_path: Path) -> Iterator[Callable[..., tuple[Server, httpx.Client]]]:
    """Starts servers of a test's own against `JwksServer`s; stops them (and checks they stop cleanly) after."""
    started: list[tuple[Server, httpx.Client]] = []

    def start(jwks_server: JwksServer, **extra: str) -> tuple[Server, httpx.Client]:
        server = Server(env=jwks_env(database, jwks_server.url, **extra),
                        log_path=tmp_path / f"serve-{len(started)}.log").start()
        client = httpx.Client(base_url=server.base_url, timeout=20)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        assert server.stop() == 0, server.log()
        assert "Traceback" not in server.log() and "Task was destroyed" not in server.log(), server.log()


@pytest.fixture
def own_jwks() -> Iterator[JwksServer]:
    server = JwksServer().start()
    yield server
    server.stop()


def create_and_list(client: httpx.Client, token: str) -> None:
    """Assert that `token` creates a task and lists exactly that task (a fresh sub sees only its own)."""
    created = client.post("/api/tasks", json={"title": "signed by a JWKS key"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    listed = client.get("/api/tasks", headers=bearer(token))
    assert listed.status_code == 200, listed.text
    assert [task["id"] for task in listed.json()["tasks"]] == [created.json()["id"]]
    assert created.json()["user_id"] == jwt.decode(token, options={"verify_signature": False})["sub"]


def assert_unauthorized(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "unauthorized", "message": message}
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- accepted ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["EdDSA", "ES256", "RS256"])
def test_token_signed_by_a_jwks_key_is_accepted(api: httpx.Client, keys: dict[str, SigningKey], name: str) -> None:
    create_and_list(api, keys[name].token())


@pytest.mark.parametrize(("name", "alg"), [("RSA no alg", "RS256"), ("RSA no alg", "PS256"),
                                           ("P-521 no alg", "ES512")])
def test_key_without_alg_accepts_what_its_type_implies(api: httpx.Client, keys: dict[str, SigningKey], name: str,
                                                       alg: str) -> None:
    create_and_list(api, keys[name].token(alg=alg))


def test_hs256_still_accepted_beside_the_jwks(api: httpx.Client) -> None:
    token = mint_token(JWT_SECRET, new_sub(), extra={"iss": ISSUER, "aud": AUDIENCE})
    create_and_list(api, token)


def test_start_up_logs_the_key_ids(api: httpx.Client, keys: dict[str, SigningKey]) -> None:
    log = api.server.log()  # type: ignore[attr-defined]
    line = next(line for line in log.splitlines() if "key ids" in line)
    assert json.loads(line)["level"] == "info"
    assert all(key.kid in line for key in keys.values())


# --- rejected ------------------------------------------------------------------------------------

def test_token_whose_alg_is_not_its_keys_is_rejected(api: httpx.Client, keys: dict[str, SigningKey]) -> None:
    # A PS256 signature made with the right private key, but the JWK declares RS256.
    assert_unauthorized(api.get("/api/tasks", headers=bearer(keys["RS256"].token(alg="PS256"))),
                        "token algorithm does not match its key")
    # ES256 tokens that name the Ed25519 key, and the P-521 key whose JWK implies ES512 only.
    other = signing_key("ES256")
    for kid in (keys["EdDSA"].kid, keys["P-521 no alg"].kid):
        assert_unauthorized(api.get("/api/tasks", headers=bearer(other.token(kid=kid))),
                            "token algorithm does not match its key")


@pytest.mark.parametrize("form", ["PEM", "JWK JSON"])
def test_hs256_token_forged_with_a_public_key_is_rejected(api: httpx.Client, keys: dict[str, SigningKey],
                                                           form: str) -> None:
    for key in keys.values():
        secret = key.public_pem() if form == "PEM" else json.dumps(key.jwk).encode()
        assert_unauthorized(api.get("/api/tasks", headers=bearer(forged_hs256(key, secret))),
                            "token signature invalid")


def test_hs256_token_is_rejected_when_only_the_jwks_is_configured(
        jwks: JwksServer, keys: dict[str, SigningKey], start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    _, client = start_api(jwks, JWT_SECRET="", BETTER_AUTH_SECRET="")
    create_and_list(client, keys["EdDSA"].token())
    forged = forged_hs256(keys["EdDSA"], keys["EdDSA"].public_pem())
    assert_unauthorized(client.get("/api/tasks", headers=bearer(forged)), "token algorithm not accepted")
    token = mint_token(JWT_SECRET, new_sub(), extra={"iss": ISSUER, "aud": AUDIENCE})
    assert_unauthorized(client.get("/api/tasks", headers=bearer(token)), "token algorithm not accepted")


def test_invalid_asymmetric_tokens_are_rejected(api: httpx.Client, keys: dict[str, SigningKey]) -> None:
    key = keys["EdDSA"]
    cases = {
        "token kid is not in the JWKS": key.token(kid=uuid.uuid4().hex),
        "token has no kid": key.token(kid=None),
        "token signature invalid": tampered(key.token()),
        "token issuer not accepted": key.token(iss="http://localhost:3001"),
        "token audience not accepted": key.token(aud="http://evil.example"),
        "token expired": key.token(iat=int(time.time()) - 2000, exp=int(time.time()) - 1000),
        "token has no exp": key.token(exp=None),
    }
    for message, token in cases.items():
        assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), message)


# --- fetching, caching, rotation and outages -----------------------------------------------------

def test_rotated_key_is_accepted_on_its_first_request(
        own_jwks: JwksServer, start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    old, new = signing_key("EdDSA"), signing_key("EdDSA")
    own_jwks.publish(old)
    _, client = start_api(own_jwks)
    assert own_jwks.fetches == 1  # at start-up
    create_and_list(client, old.token())
    own_jwks.publish(new)  # the issuer rotates: the new key is listed, the old one stays for a while
    create_and_list(client, new.token())
    create_and_list(client, old.token())
    assert own_jwks.fetches == 2


def test_cached_key_still_works_while_the_jwks_is_down(api: httpx.Client, jwks: JwksServer,
                                                       keys: dict[str, SigningKey]) -> None:
    jwks.down = True
    try:
        # A token never seen before, so the key cache answers, not the cache of verified tokens.
        create_and_list(api, keys["ES256"].token())
    finally:
        jwks.down = False


def test_unknown_kid_while_the_jwks_is_down_is_503(
        own_jwks: JwksServer, start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    known, unknown = signing_key("EdDSA"), signing_key("EdDSA")
    own_jwks.publish(known)
    _, client = start_api(own_jwks)
    own_jwks.down = True
    response = client.get("/api/tasks", headers=bearer(unknown.token()))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"error": "auth_unavailable",
                               "message": "the token's signing keys cannot be fetched, retry shortly"}
    assert own_jwks.fetches == 2
    # Within the refetch interval another unknown kid fetches nothing and still gets 503 ...
    assert client.get("/api/tasks", headers=bearer(unknown.token())).status_code == 503
    assert own_jwks.fetches == 2
    # ... while the cached key keeps working.
    create_and_list(client, known.token())


def test_burst_with_a_new_kid_fetches_the_jwks_once(
        own_jwks: JwksServer, start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    old, new = signing_key("EdDSA"), signing_key("ES256")
    own_jwks.publish(old)
    server, _ = start_api(own_jwks)
    assert own_jwks.fetches == 1
    own_jwks.publish(new)
    own_jwks.hold = threading.Event()  # the fetch answers only once all 50 requests are on their way
    sent = 0

    async def on_request(request: httpx.Request) -> None:
        nonlocal sent
        sent += 1

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20, event_hooks={"request": [on_request]},
                                     limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*(client.get("/api/tasks", headers=bearer(new.token()))
                                          for _ in range(50)))

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, burst())
        poll(lambda: sent == 50 and own_jwks.fetches >= 2, "50 requests sent and a JWKS fetch")
        own_jwks.hold.set()
        responses = future.result(timeout=POLL_DEADLINE_S)
    assert [r.status_code for r in responses] == [200] * 50, {r.text for r in responses}
    assert own_jwks.fetches == 2


def test_unreachable_jwks_at_start_is_a_warning_then_keys_load_on_demand(
        own_jwks: JwksServer, start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    key = signing_key("EdDSA")
    own_jwks.publish(key)
    own_jwks.down = True
    server, client = start_api(own_jwks)
    assert client.get("/health").status_code == 200
    warning = next(json.loads(line) for line in server.log().splitlines() if "unreachable" in line)
    assert warning["level"] == "warning" and own_jwks.url in warning["message"]
    own_jwks.down = False
    create_and_list(client, key.token())


def test_background_refresh_follows_the_jwks(
        own_jwks: JwksServer, start_api: Callable[..., tuple[Server, httpx.Client]]) -> None:
    old, new = signing_key("EdDSA"), signing_key("RS256")
    own_jwks.publish(old, new)
    _, client = start_api(own_jwks, JWT_JWKS_TTL_S="1")
    create_and_list(client, old.token())
    poll(lambda: own_jwks.fetches >= 3, "two background refreshes")
    own_jwks.keys = [new.jwk]  # the old key's grace period is over
    poll(lambda: client.get("/api/tasks", headers=bearer(old.token())).status_code == 401,
         "the removed key to be refused")
    assert_unauthorized(client.get("/api/tasks", headers=bearer(old.token())), "token kid is not in the JWKS")
    create_and_list(client, new.token())
