"""HTTP validators and conditional requests (RFC 9110 §8.8.3, §13): entity tags, If-None-Match, 304.

A task's entity tag comes from PostgreSQL (`taskapi.task_etag`, its updated_at); a list's is a hash of
the body it would send, which covers the page, total_count and next_cursor.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Response


def body_etag(body: bytes) -> str:
    """A strong entity tag for a response body: equal bodies, equal tags."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` lets the request proceed (True), or the client already has `etag` (False).

    Weak comparison, as §13.1.2 asks: `W/"x"` matches `"x"`; `*` matches any current representation.
    """
    if if_none_match is None:
        return True
    tags = [tag.strip() for tag in if_none_match.split(",")]
    if "*" in tags:
        return False
    return _opaque(etag) not in {_opaque(tag) for tag in tags}


def not_modified(etag: str) -> Response[Any]:
    """304: no body; the validator the client may keep using."""
    return Response(b"", status_code=304, headers={"ETag": etag})


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag
