"""The interactive API docs at /schema: Swagger UI, served with its assets by the API itself.

Nothing on the page comes from another host (issue #14: the framework's viewers loaded scripts and
fonts from CDNs and were blank offline). The assets are an allow-list of files shipped inside the
package (api/static, Swagger UI vendored from npm: api/static/swagger-ui/VENDORED.md), and the
page's Content-Security-Policy tells the browser to refuse anything else, so a script that tried
to reach another host would be stopped there too. /schema/openapi.json is the document itself;
every other /schema path answers the contract's JSON 404.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.enums import MediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin

from .errors import ErrorBody, NotFound

SWAGGER_UI_VERSION = "5.35.0"
DOCS_PATH = "/schema"
OPENAPI_PATH = f"{DOCS_PATH}/openapi.json"
ASSETS_PATH = f"{DOCS_PATH}/assets"

# Only what the page needs: same origin for scripts, styles, the document and "Try it out" requests;
# inline styles because Swagger UI sets some; images as data: URIs (its icons). No other host, no
# inline script, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    """A file the docs page loads: its bytes, media type, and a version for its URL (a content hash)."""

    body: bytes
    media_type: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:12]


# name in the URL -> file under api/static, and its media type. Nothing outside this table is served.
_ASSET_FILES = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css"),
    "docs.js": ("docs.js", "text/javascript"),
}


@cache
def asset(name: str) -> Asset | None:
    """The asset called `name`, read once from the package; None when it is not one of the page's."""
    found = _ASSET_FILES.get(name)
    if found is None:
        return None
    path, media_type = found
    return Asset(resources.files("api").joinpath("static", path).read_bytes(), media_type)


def asset_url(name: str) -> str:
    """The URL of one of the page's assets, with its content hash, so a new version is never a stale cache."""
    found = asset(name)
    assert found is not None, name
    return f"{ASSETS_PATH}/{name}?v={found.version}"


class SwaggerPage(OpenAPIRenderPlugin):
    """The docs page at /schema (Litestar serves a render plugin's page at the docs router's paths)."""

    def __init__(self) -> None:
        super().__init__(path="/", media_type=MediaType.HTML)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return page_html().encode()

    def receive_router(self, router: Router) -> None:
        router.register(serve_asset)


@cache
def page_html() -> str:
    """The page: the vendored Swagger UI, started by docs.js on the document at /schema/openapi.json."""
    openapi = html.escape(OPENAPI_PATH)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskapi API docs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{html.escape(asset_url("swagger-ui.css"))}">
</head>
<body>
<noscript>This page needs JavaScript. The OpenAPI document is at <a href="{openapi}">{openapi}</a>.</noscript>
<div id="swagger-ui" data-openapi="{openapi}"></div>
<script src="{html.escape(asset_url("swagger-ui-bundle.js"))}"></script>
<script src="{html.escape(asset_url("docs.js"))}"></script>
</body>
</html>
"""


@get("/assets/{name:str}", include_in_schema=False, sync_to_thread=False)
def serve_asset(name: str) -> Response[bytes]:
    found = asset(name)
    if found is None:
        raise NotFound("no such resource")
    # A day: the page names each asset with its content hash, so a changed file has a new URL.
    return Response(found.body, media_type=found.media_type, headers={"Cache-Control": "public, max-age=86400"})


def docs_router() -> Router:
    """The /schema router: the page, its assets and the document, each with the page's CSP."""
    return Router(DOCS_PATH, route_handlers=[], include_in_schema=False, after_request=_json_not_found,
                  response_headers=[ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
                                    ResponseHeader(name="X-Content-Type-Options", value="nosniff")])


async def _json_not_found(response: Response[Any]) -> Response[Any]:
    # Litestar's catch-all for an unknown /schema/<name> answers an HTML page of its own; the contract
    # wants its JSON 404 for every unknown path.
    if response.status_code == 404:
        return Response(ErrorBody("not_found", "no such resource"), status_code=404, media_type=MediaType.JSON)
    return response
