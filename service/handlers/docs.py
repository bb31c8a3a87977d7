"""The API explains itself: GET / says what this is and where to read on, GET /openapi.yaml is
the contract itself, and GET /docs renders it with Swagger UI, whose script and styles the
service serves from the swagger-ui-py package, so the page works with no internet."""

import base64
import hashlib
import importlib.util
from pathlib import Path

from aiohttp import web

from service.db import PROJECT_DIR
from service.metrics import VERSION
from service.schemas import json_response

NAME = "Task API"
SPEC_PATH = PROJECT_DIR / "openapi.yaml"


def _swagger_ui_files() -> Path:
    # Found, not imported: importing swagger_ui loads jinja2 and its framework adapters, which
    # serve nothing here; only its copy of Swagger UI's own files is used.
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# The assets the page loads, by the name in their URL (the route accepts only these).
ASSET_TYPES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
ASSETS_DIR = _swagger_ui_files()

# The URLs are relative, so the page also works behind a proxy that serves the API under a
# path. Swagger UI's validator badge would call validator.swagger.io: validatorUrl: null.
_START = (
    'SwaggerUIBundle({url: "openapi.yaml", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});'
)
PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{NAME}: API documentation</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>{_START}</script>
</body>
</html>
""".encode()
# The browser may load and connect to this service only: no CDN, no other site. The one inline
# script is allowed by its hash; Swagger UI's own inline styles and data: icons are allowed.
_START_HASH = base64.b64encode(hashlib.sha256(_START.encode()).digest()).decode()
PAGE_POLICY = (
    f"default-src 'self'; script-src 'self' 'sha256-{_START_HASH}'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


async def root(request: web.Request) -> web.Response:
    """What this service is, its version, and where its contract, documentation and health are."""
    router = request.app.router
    links = {
        "openapi": str(router["openapi"].url_for()),
        "docs": str(router["docs"].url_for()),
        "health": str(router["healthz"].url_for()),
    }
    return json_response({"name": NAME, "version": VERSION, "links": links})


async def openapi(request: web.Request) -> web.FileResponse:
    """The contract, openapi.yaml itself."""
    return web.FileResponse(SPEC_PATH, headers={"Content-Type": "application/yaml"})


async def docs(request: web.Request) -> web.Response:
    """Interactive documentation of the contract (Swagger UI)."""
    return web.Response(
        body=PAGE, content_type="text/html", charset="utf-8", headers={"Content-Security-Policy": PAGE_POLICY}
    )


async def docs_asset(request: web.Request) -> web.FileResponse:
    """A script, style sheet or icon of the documentation page, from the swagger-ui-py package."""
    name = request.match_info["asset"]  # the route admits only the names in ASSET_TYPES
    return web.FileResponse(ASSETS_DIR / name, headers={"Content-Type": ASSET_TYPES[name]})
