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
    """Answer preflights for allowed origins and mark their answers readable; others pass as is."""
    origins = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    if not origins or origin is None or (origin not in origins and "*" not in origins):
        return await handler(request)
    allow = {"Access-Control-Allow-Origin": "*" if "*" in origins else origin, "Vary": "Origin"}
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                **allow,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            },
        )
    response = await handler(request)
    response.headers.update(allow)
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response
