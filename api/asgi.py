"""The ASGI shapes the two outer middlewares (api/logs.py, api/limits.py) handle: plain dicts, as the server sends them.

Litestar's own ASGI types are TypedDicts keyed by its enums; the middlewares read and add keys that
those do not know (the request id, the caller), so they use these looser aliases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
