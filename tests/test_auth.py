"""CONTRACT.md section 1 for HS256: every way a token is refused, over HTTP and in the verifier itself."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest

from api.auth import Verifier
from api.config import ConfigError, Settings
from api.errors import Unauthorized
from conftest import JWT_SECRET


def token(claims: dict, secret: str = JWT_SECRET, algorithm: str = "HS256", headers: dict | None = None) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def valid_claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "auth-user", "iat": now, "exp": now + 600, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}."


def assert_401(response, *, token_sent: bool = True):
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "unauthorized" and body["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is token_sent


def test_missing_or_non_bearer_authorization_is_401(http):
    assert_401(http.get("/api/tasks"), token_sent=False)
    assert_401(http.get("/api/tasks", headers={"Authorization": "Basic dXNlcjpwYXNz"}), token_sent=False)
    assert_401(http.get("/api/tasks", headers={"Authorization": "Bearer"}), token_sent=False)


@pytest.mark.parametrize("bad", [
    "not-a-jwt",
    "a.b.c",
    token(valid_claims(), secret="another-secret-another-secret-xx"),
    token(valid_claims(exp=int(time.time()) - 3600)),
    token(valid_claims(nbf=int(time.time()) + 3600)),
    token({k: v for k, v in valid_claims().items() if k != "exp"}),
    token({k: v for k, v in valid_claims().items() if k != "sub"}),
    token(valid_claims(sub="")),
    token(valid_claims(sub="x" * 256)),
    unsigned(valid_claims()),
    token(valid_claims(), algorithm="HS512"),
    "x" * 100_000,
], ids=["garbage", "three-parts", "wrong-secret", "expired", "not-yet-valid", "no-exp", "no-sub", "empty-sub",
        "long-sub", "alg-none", "hs512", "huge"])
def test_bad_tokens_are_401(http, bad):
    assert_401(http.get("/api/tasks", headers={"Authorization": f"Bearer {bad}"}))


def test_numeric_sub_is_refused(http):
    claims = valid_claims()
    claims["sub"] = 12345
    bad = jwt.api_jws.encode(json.dumps(claims).encode(), JWT_SECRET, algorithm="HS256")
    assert_401(http.get("/api/tasks", headers={"Authorization": f"Bearer {bad}"}))


def test_tampered_payload_is_401(http):
    good = token(valid_claims(sub="victim"))
    header, _, signature = good.split(".")
    forged = f"{header}.{b64(json.dumps(valid_claims(sub='attacker')).encode())}.{signature}"
    assert_401(http.get("/api/tasks", headers={"Authorization": f"Bearer {forged}"}))


def test_leeway_accepts_just_expired_tokens(http):
    recent = token(valid_claims(sub="leeway-user", exp=int(time.time()) - 5))  # default JWT_LEEWAY_S is 30
    assert http.get("/api/tasks", headers={"Authorization": f"Bearer {recent}"}).status_code == 200


def test_scheme_is_case_insensitive_and_sub_is_opaque(http):
    sub = "Better-Auth_ID:9f8e/7d6c+ünïcødé"
    response = http.post("/api/tasks", json={"title": "opaque"},
                         headers={"Authorization": f"bearer {token(valid_claims(sub=sub))}"})
    assert response.status_code == 201 and response.json()["user_id"] == sub


def verifier(**env) -> Verifier:
    return Verifier(Settings.from_env({"DATABASE_URL": "x", "JWT_SECRET": JWT_SECRET, **env}))


def check(v: Verifier, raw: str) -> str:
    return asyncio.run(v.user_id(f"Bearer {raw}"))


def test_issuer_and_audience_are_checked_when_configured():
    v = verifier(JWT_ISSUER="http://localhost:3000", JWT_AUDIENCE="http://localhost:3000")
    good = token(valid_claims(iss="http://localhost:3000", aud="http://localhost:3000"))
    assert check(v, good) == "auth-user"
    for bad in (valid_claims(iss="http://evil", aud="http://localhost:3000"),
                valid_claims(iss="http://localhost:3000", aud="http://evil"),
                valid_claims(aud="http://localhost:3000"), valid_claims(iss="http://localhost:3000")):
        with pytest.raises(Unauthorized):
            check(v, token(bad))


def test_audience_is_ignored_when_not_configured():
    assert check(verifier(), token(valid_claims(aud="anything", iss="anyone"))) == "auth-user"


def test_leeway_is_configurable():
    stale = token(valid_claims(exp=int(time.time()) - 10))
    assert check(verifier(JWT_LEEWAY_S="30"), stale) == "auth-user"
    with pytest.raises(Unauthorized, match="expired"):
        check(verifier(JWT_LEEWAY_S="0"), stale)


def test_cached_token_still_expires():
    v = verifier(JWT_LEEWAY_S="0")
    exp = int(time.time()) - 100
    stale = token(valid_claims(exp=exp))
    v._cache[stale] = ("auth-user", float(exp))  # as if verified while valid, and its exp has passed since
    with pytest.raises(Unauthorized, match="expired"):
        check(v, stale)
    assert stale not in v._cache


def test_better_auth_secret_is_read_when_jwt_secret_is_unset():
    better_auth, ours = "from-better-auth-" + "b" * 16, "from-jwt-secret-" + "j" * 16
    settings = Settings.from_env({"DATABASE_URL": "x", "BETTER_AUTH_SECRET": better_auth})
    assert settings.jwt_secret == better_auth
    both = Settings.from_env({"DATABASE_URL": "x", "BETTER_AUTH_SECRET": better_auth, "JWT_SECRET": ours})
    assert both.jwt_secret == ours


@pytest.mark.parametrize("secret, refused", [("x" * 31, True), ("x" * 32, False), ("é" * 16, False),
                                             ("é" * 15, True), ("", False)])
def test_a_secret_shorter_than_32_bytes_is_refused(secret, refused):
    # RFC 7518 section 3.2: an HS256 key of at least 256 bits. Bytes, not characters: é is two in UTF-8.
    env = {"DATABASE_URL": "x", "JWT_SECRET": secret, "JWT_JWKS_URL": "https://auth.example.com/jwks"}
    if refused:
        with pytest.raises(ConfigError, match="at least 32 bytes"):
            Settings.from_env(env)
    else:
        Settings.from_env(env)


def test_no_key_configured_is_a_config_error():
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.from_env({"DATABASE_URL": "x"})


def test_token_cache_is_bounded_and_evicts_the_oldest(monkeypatch):
    import api.auth

    monkeypatch.setattr(api.auth, "TOKEN_CACHE_SIZE", 3)
    v = verifier()
    tokens = [token(valid_claims(sub=f"cache-{i}")) for i in range(5)]
    for raw in tokens:
        check(v, raw)
    assert list(v._cache) == tokens[2:]
    assert check(v, tokens[0]) == "cache-0"  # evicted, verified again
