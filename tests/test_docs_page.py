"""Issue #14.3: one interactive docs page at /schema that works offline.

The page and everything it loads come from the API itself: no URL in its HTML names another host,
every asset it references answers 200 from the server, and its Content-Security-Policy lets the
browser load nothing from anywhere else. Every other /schema path is the contract's JSON 404.
"""

from __future__ import annotations

import fnmatch
import tomllib
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import pytest

from api import docs
from conftest import ROOT


class References(HTMLParser):
    """Every URL the page makes the browser load or link to (src, href, data-openapi), and its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-openapi", "action", "srcset", "poster") and value is not None:
                self.urls.append(value)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.fixture(scope="module")
def page(http):
    response = http.get("/schema")
    assert response.status_code == 200, response.text
    return response


def test_the_page_is_html_with_a_policy_that_allows_only_this_origin(page):
    assert page.headers["content-type"].startswith("text/html")
    policy = {directive.split()[0]: directive.split()[1:]
              for directive in page.headers["content-security-policy"].split(";") if directive.strip()}
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no inline script, no other host
    for directive, sources in policy.items():
        assert all(source in ("'self'", "'none'", "'unsafe-inline'", "data:") for source in sources), directive
    assert page.headers["x-content-type-options"] == "nosniff"


def test_no_url_in_the_page_names_another_host(page):
    assert "http://" not in page.text and "https://" not in page.text and "//" not in page.text.replace("://", "")
    parser = References()
    parser.feed(page.text)
    assert parser.urls, "the page references nothing: the parser or the page is broken"
    assert parser.inline_scripts == 0
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.netloc, url
        assert parts.scheme in ("", "data"), url


def test_every_asset_the_page_references_is_served_by_the_api(http, page):
    parser = References()
    parser.feed(page.text)
    loaded = {url for url in parser.urls if not url.startswith("data:")}
    assert len(loaded) == 4  # the stylesheet, Swagger UI, docs.js, the OpenAPI document
    expected = {".css": "text/css", ".js": "text/javascript", ".json": "application/vnd.oai.openapi+json"}
    for url in loaded:
        response = http.get(urljoin("/schema", url))
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(expected[PurePosixPath(urlsplit(url).path).suffix]), url
        assert response.content, url


def test_the_page_starts_swagger_ui_on_the_document_with_no_validator_badge(http):
    script = http.get("/schema/assets/docs.js").text
    assert "SwaggerUIBundle(" in script and 'getAttribute("data-openapi")' in script
    assert "validatorUrl: null" in script  # the badge would be fetched from validator.swagger.io
    bundle = http.get("/schema/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content


def test_the_document_is_served_at_schema_openapi_json(http):
    response = http.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")


@pytest.mark.parametrize("path", [
    "/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc", "/schema/openapi.yaml",
    "/schema/openapi.yml", "/schema/oauth2-redirect.html", "/schema/nope", "/schema/x/y", "/schema/assets",
    "/schema/assets/nope.js", "/schema/assets/LICENSE", "/schema/assets/swagger-ui/swagger-ui.css",
    "/schema/assets/%2e%2e%2fdocs.py", "/schema/assets/swagger-ui-bundle.js.map",
])
def test_every_other_schema_path_is_the_contracts_json_404(http, path):
    response = http.get(path)
    assert response.status_code == 404, path
    assert response.headers["content-type"].startswith("application/json"), path
    assert response.json() == {"error": "not_found", "message": "no such resource"}


def test_the_assets_ship_in_the_package():
    """A non-editable install (the image) serves the page too: pyproject's package-data covers each asset."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    for name, (path, _) in docs._ASSET_FILES.items():
        assert any(fnmatch.fnmatch(f"static/{path}", pattern) for pattern in patterns), name
        assert (ROOT / "api" / "static" / path).is_file(), name
