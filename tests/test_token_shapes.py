"""Every token gets 401, never 500 (issue #9): headers and claims of any JSON shape, signed or not.

Hypothesis writes token headers and claims of arbitrary JSON values (lists, objects, huge integers,
floats, NaN and infinities, lone surrogates, nulls, booleans) in every place the verifier reads, and
signs some of them with the right secret. The verifier must return a usable user id or refuse with
`Unauthorized`; over HTTP the server must answer 200 or the contract's JSON 401, and write exactly one
intact JSON access-log line for the request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.auth import PublicKey, Verifier
from api.config import Settings
from api.errors import Unauthorized
from conftest import JWT_SECRET, Server

# Text with lone surrogates mixed in: JSON's "\ud800" escapes decode to them.
TEXT = st.text(alphabet=st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                                                 exclude_categories=())), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**20, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


def _now() -> int:
    return int(time.time())


def _claim(name: str) -> st.SearchStrategy[Any]:
    """A plausible value for the claim half of the time, any JSON value otherwise."""
    plausible = {
        "sub": st.one_of(st.just("token-shape-user"), TEXT.filter(bool)),
        "exp": st.one_of(st.builds(lambda: _now() + 600), st.builds(lambda: float(_now() + 600)),
                         st.builds(lambda: _now() - 3600)),
        "nbf": st.builds(lambda: _now() - 10),
        "iat": st.builds(lambda: _now() - 10),
        "iss": st.just("https://issuer.example.com"),
        "aud": st.one_of(st.just("https://api.example.com"), st.just(["https://api.example.com"])),
        "jti": TEXT,
    }[name]
    return st.one_of(plausible, JSON)


HEADERS = st.one_of(
    st.fixed_dictionaries(
        {"alg": st.one_of(st.sampled_from(["HS256", "none", "RS256", "EdDSA", "HS512"]), JSON)},
        optional={"typ": st.one_of(st.just("JWT"), JSON), "kid": st.one_of(st.just("key-1"), JSON),
                  "crit": JSON, "b64": JSON, "jku": JSON}),
    JSON)
CLAIMS = st.one_of(
    st.fixed_dictionaries({}, optional={name: _claim(name) for name in ("sub", "exp", "nbf", "iat", "iss", "aud",
                                                                        "jti")}),
    JSON)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(header: Any, claims: Any, *, signed: bool) -> str:
    """A compact JWS of exactly these JSON values (PyJWT would refuse to write most of them)."""
    signing_input = (f"{_b64(json.dumps(header, allow_nan=True).encode())}."
                     f"{_b64(json.dumps(claims, allow_nan=True).encode())}")
    key = JWT_SECRET.encode() if signed else b"not-the-secret-not-the-secret-!!"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class NoKeys:
    """A JWKS that knows no key: tokens naming asymmetric algorithms reach the kid checks."""

    async def key_for(self, kid: str) -> PublicKey | None:
        assert isinstance(kid, str)
        return None


VERIFIERS = [
    Verifier(Settings.from_env({"DATABASE_URL": "x", "JWT_SECRET": JWT_SECRET})),
    Verifier(Settings.from_env({"DATABASE_URL": "x", "JWT_SECRET": JWT_SECRET,
                                "JWT_ISSUER": "https://issuer.example.com", "JWT_AUDIENCE": "https://api.example.com",
                                "JWT_JWKS_URL": "https://issuer.example.com/jwks"}), NoKeys()),
]


def verify(verifier: Verifier, token: str) -> str | None:
    """The user id, or None when refused with Unauthorized; anything else raised fails the test."""
    verifier._cache.clear()
    try:
        sub = asyncio.run(verifier.user_id(f"Bearer {token}"))
    except Unauthorized:
        return None
    assert isinstance(sub, str) and 1 <= len(sub) <= 255
    sub.encode("utf-8")  # the access log and the database driver must be able to take it
    return sub


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=HEADERS, claims=CLAIMS, signed=st.booleans())
def test_the_verifier_accepts_or_refuses_every_shape(header, claims, signed):
    token = encode(header, claims, signed=signed)
    for verifier in VERIFIERS:
        sub = verify(verifier, token)
        if not signed:
            assert sub is None


# The shapes that gave a 500 before issue #9, pinned down whatever Hypothesis happens to draw.
KNOWN_BAD = {
    "alg list": ({"alg": ["HS256"]}, {"sub": "u", "exp": 4102444800}),
    "alg object": ({"alg": {"HS256": True}}, {"sub": "u", "exp": 4102444800}),
    "kid list": ({"alg": "RS256", "kid": ["key-1"]}, {"sub": "u", "exp": 4102444800}),
    "kid surrogate": ({"alg": "RS256", "kid": "\ud800"}, {"sub": "u", "exp": 4102444800}),
    "header not an object": (["HS256"], {"sub": "u", "exp": 4102444800}),
    "claims not an object": ({"alg": "HS256"}, ["u"]),
    "exp huge": ({"alg": "HS256"}, {"sub": "u", "exp": 10**400}),
    "exp NaN": ({"alg": "HS256"}, {"sub": "u", "exp": float("nan")}),
    "exp Infinity": ({"alg": "HS256"}, {"sub": "u", "exp": float("inf")}),
    "exp true": ({"alg": "HS256"}, {"sub": "u", "exp": True}),
    "exp string": ({"alg": "HS256"}, {"sub": "u", "exp": "4102444800"}),
    "exp 1e300": ({"alg": "HS256"}, {"sub": "u", "exp": 1e300}),
    "nbf object": ({"alg": "HS256"}, {"sub": "u", "exp": 4102444800, "nbf": {}}),
    "iat huge": ({"alg": "HS256"}, {"sub": "u", "exp": 4102444800, "iat": -(10**400)}),
    "sub surrogate": ({"alg": "HS256"}, {"sub": "\ud800", "exp": 4102444800}),
    "sub surrogate pair halves": ({"alg": "HS256"}, {"sub": "a\udfffb", "exp": 4102444800}),
    "sub null": ({"alg": "HS256"}, {"sub": None, "exp": 4102444800}),
    "iss list": ({"alg": "HS256"}, {"sub": "u", "exp": 4102444800, "iss": ["https://issuer.example.com"]}),
    "aud object": ({"alg": "HS256"}, {"sub": "u", "exp": 4102444800, "aud": {"a": 1}}),
    "aud list of numbers": ({"alg": "HS256"}, {"sub": "u", "exp": 4102444800, "aud": [1, 2]}),
    "crit": ({"alg": "HS256", "crit": ["exp"]}, {"sub": "u", "exp": 4102444800}),
    "b64 false": ({"alg": "HS256", "b64": False}, {"sub": "u", "exp": 4102444800}),
}


@pytest.mark.parametrize("name", KNOWN_BAD)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_known_bad_shapes_are_refused(name, signed):
    header, claims = KNOWN_BAD[name]
    for verifier in VERIFIERS:
        assert verify(verifier, encode(header, claims, signed=signed)) is None


def test_a_good_token_in_this_encoding_is_accepted():
    # The control for the tests above: the hand-made encoding is a valid token when it should be.
    token = encode({"alg": "HS256", "typ": "JWT"}, {"sub": "shape-user", "exp": _now() + 600}, signed=True)
    assert verify(VERIFIERS[0], token) == "shape-user"


def assert_answer(server: Server, http: httpx.Client, token: str) -> int:
    request_id = f"shape-{uuid.uuid4().hex}"
    response = http.get("/api/tasks", headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id})
    assert response.status_code in (200, 401), response.text
    if response.status_code == 401:
        assert response.json()["error"] == "unauthorized" and response.json()["message"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    lines = [line for line in server.log().splitlines() if request_id in line]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["request_id"] == request_id and entry["status"] == response.status_code
    return response.status_code


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(header=HEADERS, claims=CLAIMS, signed=st.booleans())
def test_the_server_answers_200_or_401_and_logs_one_line(server, http, header, claims, signed):
    assert_answer(server, http, encode(header, claims, signed=signed))


@pytest.mark.parametrize("name", KNOWN_BAD)
def test_known_bad_shapes_get_a_401_over_http(server, http, name):
    header, claims = KNOWN_BAD[name]
    assert assert_answer(server, http, encode(header, claims, signed=True)) == 401
