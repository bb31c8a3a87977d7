"""Headers at the edge: a request's header fields must be UTF-8, and every answer carries the
headers that keep browsers and caches from misusing it."""

from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import Problem

# What the Server header says: no product versions for an attacker to match against advisories.
SERVER = "task-api"


@web.middleware
async def header_bytes_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for a request with a header field that is not valid UTF-8, before anything reads one.

    aiohttp decodes header bytes as UTF-8 with surrogate escapes, so such a value is a str that
    cannot be encoded again: the token check, URL building and JSON would fail on it with a 500
    (as Authorization and Host did). Every field is checked, not a list of the ones read today,
    so a header that code reads later is covered too; no client of a JSON API has a reason to
    send Latin-1 bytes, and an ASCII value (nearly all of them) costs one isascii() call.
    """
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise Problem(
                    400,
                    f"The {name} header is not valid UTF-8.",
                    errors={name: ["Not valid UTF-8."]},
                ) from None
    return await handler(request)


async def answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer as it is sent (streamed ones included): nosniff, a Server without versions,
    and no-store for an answer to a request with credentials, unless the handler chose a policy."""
    headers = response.headers
    headers["Server"] = SERVER
    headers["X-Content-Type-Options"] = "nosniff"
    if "Authorization" in request.headers and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
