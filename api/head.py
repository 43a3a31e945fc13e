"""HEAD on every GET route (RFC 9110 §9.3.2), by construction: the request runs as a GET, the body is dropped.

One ASGI layer instead of a HEAD handler per route, so a GET route added later answers HEAD too, with
the same status and headers (Content-Length, ETag, Link...) that its GET would have. It also adds
HEAD to every `Allow` header that lists GET (405s and OPTIONS), so what is advertised is what works.
"""

from __future__ import annotations

from .asgi import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: HEAD runs as GET and sends no body; `Allow` names HEAD wherever it names GET."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope["method"] = "GET"

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.start":
                if head:
                    # Routing is done by now. Put the client's method back for the access log
                    # (api/logs.py reads it from this scope when the last body message passes).
                    scope["method"] = "HEAD"
                _allow_head(message)
            elif head and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, receive, send_head)


def _allow_head(message: Message) -> None:
    headers = message.get("headers", ())
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"allow":
            methods = {method.strip() for method in value.split(b",") if method.strip()}
            if b"GET" in methods and b"HEAD" not in methods:
                changed = list(headers)
                changed[index] = (name, b", ".join(sorted(methods | {b"HEAD"})))
                message["headers"] = changed
            return
