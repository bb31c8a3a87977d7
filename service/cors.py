"""CORS for browser frontends: the origins in CORS_ORIGINS may call the API and read its
answers, errors included, and the headers that matter to them."""

from aiohttp import web
from aiohttp.typedefs import Handler

from service.keys import SETTINGS

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-Id"
EXPOSED_HEADERS = "Location, Link, ETag, X-Request-Id, Retry-After"
PREFLIGHT_MAX_AGE = "600"


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights for allowed origins; everything else passes, and add_cors_headers marks
    the answer readable."""
    allow = _allow(request)
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if allow is not None and preflight:
        return web.Response(
            status=204,
            headers={
                **allow,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            },
        )
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Let an allowed origin read the answer (an on_response_prepare signal, not the middleware:
    a streamed answer sends its headers from inside the handler, before the middleware sees it)."""
    allow = _allow(request)
    if allow is not None:
        response.headers.update(allow)
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def _allow(request: web.Request) -> dict[str, str] | None:
    """The headers that allow the request's origin, or None when it is not allowed (or absent)."""
    origins = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    if not origins or origin is None or (origin not in origins and "*" not in origins):
        return None
    return {"Access-Control-Allow-Origin": "*" if "*" in origins else origin, "Vary": "Origin"}
