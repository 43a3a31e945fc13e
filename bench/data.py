"""The benchmark's data: the seeded tasks, the files the wrk scripts read, and tokens warm or cold.

Warm tokens (tokens.txt) are one per seeded user, reused all run long: after the warm-up, the
server's token cache answers for them. Cold tokens are used once each (a fresh `jti` per token), so
every request's token is one the server has never seen and verifies in full: HS256 against the
shared secret, or EdDSA against a key from the JWKS the bench serves itself (`JwksServer`).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

from api.auth import mint_token

# Better Auth ids are 32 characters; ours are this prefix plus the user number (pgbench can only
# make numbers, and must build the same ids inside its SQL).
USER_PREFIX = "bnch0usr0k2m9q4w8e5r1t6y3"
TOKEN_TTL_S = 6 * 3600
Minter = Callable[[str, str], str]  # (sub, jti) -> a signed token

# The seed, as a superuser (past RLS): `per_user` tasks for each of `users` users, spread in time.
SEED_TASKS = """
INSERT INTO taskapi.tasks (user_id, title, description, completed, created_at, updated_at)
SELECT %(prefix)s || u, 'Task ' || t || ' of user ' || u,
       CASE WHEN t %% 3 = 0 THEN 'A description for task ' || t || ', long enough to be realistic.' END,
       t %% 4 = 0,
       now() - make_interval(mins => (%(per_user)s - t) * 17 + u %% 13),
       now() - make_interval(mins => (%(per_user)s - t) * 17 + u %% 13)
FROM generate_series(1, %(users)s) AS u, generate_series(1, %(per_user)s) AS t
"""


def user_id(number: int) -> str:
    """The id of seeded user `number` (1-based)."""
    return f"{USER_PREFIX}{number}"


def seed(admin_dsn: str, users: int, per_user: int) -> float:
    """Insert the tasks and analyze; return the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(SEED_TASKS, {"prefix": USER_PREFIX, "users": users, "per_user": per_user})
        conn.execute("VACUUM (ANALYZE) taskapi.tasks")
    return time.monotonic() - started


# Tasks sampled for the scenarios: a fifth are read and changed, the rest deleted, each once (three
# 10 s delete runs at ~2,500 requests/s need 75,000; a run that runs out is failed, see scenarios.lua).
READS, DELETES = 40_000, 160_000


def write_wrk_data(work: Path, admin_dsn: str, secret: str, users: int, per_user: int) -> Path:
    """Data for the wrk scripts: a token per user, (user, task) pairs to read and change, pairs to delete.

    Plain text, one item per line (a Lua table literal this big exceeds Lua's constant limit); the
    returned path is the folder holding tokens.txt, pairs.txt and deletes.txt.
    """
    tokens = [mint_token(secret, user_id(u), ttl_s=TOKEN_TTL_S) for u in range(1, users + 1)]
    with psycopg.connect(admin_dsn) as conn:
        sample = conn.execute("SELECT user_id, id FROM taskapi.tasks ORDER BY random() LIMIT %s",
                              [min(users * per_user, READS + DELETES)]).fetchall()
    index = {user_id(u): u for u in range(1, users + 1)}
    pairs = [f"{index[user]} {task}" for user, task in sample]
    reads, deletes = pairs[: len(pairs) // 5 or 1], pairs[len(pairs) // 5:] or pairs
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    (work / "pairs.txt").write_text("\n".join(reads) + "\n")
    (work / "deletes.txt").write_text("\n".join(deletes) + "\n")
    return work


def write_cold_tokens(path: Path, count: int, users: int, mint: Minter) -> Path:
    """`count` tokens never used before, for random seeded users: `mint(sub, jti)` makes each one."""
    path.write_text("\n".join(mint(user_id(random.randint(1, users)), uuid.uuid4().hex)
                              for _ in range(count)) + "\n")
    return path


def hs256_minter(secret: str) -> Minter:
    """`mint(sub, jti)` for HS256 tokens signed with the server's JWT_SECRET."""
    def mint(sub: str, jti: str) -> str:
        return mint_token(secret, sub, ttl_s=TOKEN_TTL_S, extra={"jti": jti})

    return mint


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 with one Ed25519 key, for JWT_JWKS_URL; counts its fetches."""

    def __init__(self) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex
        jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        self.body = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}).encode()
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks.body)))
                self.end_headers()
                self.wfile.write(jwks.body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the bench prints its own lines
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bench-jwks", daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def minter(self) -> Minter:
        """`mint(sub, jti)` for EdDSA tokens signed with this JWKS's key (header `kid`)."""
        def mint(sub: str, jti: str) -> str:
            now = int(time.time())
            claims = {"sub": sub, "iat": now, "exp": now + TOKEN_TTL_S, "jti": jti}
            return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": self.kid})

        return mint
