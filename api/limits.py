"""What a client may send, and how long it may take: enforced before the app reads anything.

granian (hyper) already bounds the time to send the request head (`HTTP_KEEPALIVE_S`) and, far
above these limits, its size (431, then the connection is closed). This ASGI layer adds what it
cannot: a JSON 431 for a head over `MAX_HEAD_BYTES`, a 413 for a body that is or turns out to be over
`MAX_BODY_BYTES` (whatever Content-Length said, also when chunked), and a deadline for the body. A
client that trickles its body a byte a second would otherwise hold a request slot (and its memory)
for as long as it likes; granian's header timeout stops at the end of the head.
"""

from __future__ import annotations

import asyncio

import msgspec

from .asgi import ASGIApp, Message, Receive, Scope, Send
from .errors import ApiError, BadRequest, ErrorBody, HeadersTooLarge, PayloadTooLarge, RequestTimeout

MAX_BODY_BYTES = 64 * 1024
# The request line and headers together. Browsers send well under 8 KiB and a JWT is a few KiB; this
# is far above both, so that a huge token still meets auth.py's specific 401 ("token too long").
MAX_HEAD_BYTES = 128 * 1024


class RequestLimits:
    """ASGI middleware: head size, body size and body deadline; refusals are the contract's JSON."""

    def __init__(self, app: ASGIApp, *, body_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _check_head(scope)
        if refusal is not None:
            await _respond(send, refusal)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received = 0
        complete = False

        async def limited_receive() -> Message:
            # Raising an ApiError here lets Litestar's exception handlers answer as for any other
            # error: the handler that reads the body is the one that fails.
            nonlocal received, complete
            if complete:
                return await receive()  # after the body only http.disconnect can come
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the body did not arrive within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                complete = True
                raise BadRequest("the client closed the connection before the body was complete")
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise PayloadTooLarge("the request body is larger than 64 KiB")
            if not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, limited_receive, send)


def _check_head(scope: Scope) -> ApiError | None:
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    declared: bytes | None = None
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        size += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        if name == b"content-length":
            declared = value
    if size > MAX_HEAD_BYTES:
        return HeadersTooLarge("the request line and headers are larger than 128 KiB")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        return PayloadTooLarge("the request body is larger than 64 KiB")  # said so before sending it
    return None


async def _respond(send: Send, error: ApiError) -> None:
    body = msgspec.json.encode(ErrorBody(error.code, error.message))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
