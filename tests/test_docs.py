"""The API explains itself: GET / with links, GET /openapi.yaml (the file itself) and GET /docs,
whose every asset the service serves itself, without a token."""

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import yaml

from service.metrics import VERSION
from tests.conftest import SPEC_PATH, ApiClient


async def test_the_root_says_what_this_is_and_where_to_read_on(api: ApiClient) -> None:
    answer = await api.get("/")
    assert answer.status == 200
    assert answer.json == {
        "name": "Task API",
        "version": VERSION,
        "links": {"openapi": "/openapi.yaml", "docs": "/docs", "health": "/healthz"},
    }
    for link in answer.json["links"].values():
        assert (await api.get(link)).status == 200


async def test_openapi_yaml_is_the_spec_file_itself(api: ApiClient) -> None:
    answer = await api.get("/openapi.yaml")
    assert answer.status == 200 and answer.content_type == "application/yaml"
    assert answer.body == SPEC_PATH.read_bytes()
    assert yaml.safe_load(answer.body)["openapi"].startswith("3.1")


class _Assets(HTMLParser):
    """The URLs of the scripts, style sheets and icons a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(found["src"] or "")
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")


async def test_docs_loads_every_asset_from_the_service_itself(api: ApiClient) -> None:
    page = await api.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = page.body.decode()
    parser = _Assets()
    parser.feed(html)
    assert len(parser.urls) == 3
    expected_types = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
    for url in parser.urls:
        assert "//" not in url, url  # relative: this service, never a CDN
        asset = await api.get(urljoin("/docs", url))
        assert asset.status == 200, url
        assert asset.content_type == expected_types[url[url.rindex(".") :]]
        assert len(asset.body) > 0
    bundle = (await api.get("/docs/swagger-ui-bundle.js")).body
    assert b"SwaggerUIBundle" in bundle
    # The page's own script points Swagger UI at this service's spec, and at no validator.
    assert re.search(r'url: "openapi.yaml"', html) and "validatorUrl: null" in html


async def test_the_docs_page_may_load_nothing_from_elsewhere(api: ApiClient) -> None:
    policy = (await api.get("/docs")).headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"].startswith("'self' 'sha256-")
    assert "http" not in policy


async def test_only_the_pages_assets_are_served(api: ApiClient) -> None:
    for path in ("/docs/index.css", "/docs/../setup.cfg", "/docs/%2e%2e/setup.cfg", "/docs/", "/docs/x.js"):
        answer = await api.get(path)
        assert answer.status == 404, path
        assert answer.content_type == "application/problem+json"
