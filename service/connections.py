"""How the service meets TCP clients: a cap on connections per worker, a deadline for each
request's head, and aiohttp's refusals of malformed requests logged without their content.

aiohttp has a keep-alive timeout but no deadline on a request that arrives a byte at a time,
and no limit on connections: slow clients could hold every descriptor a worker has. The body's
deadline is in schemas.load_body, where bodies are read.
"""

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.headers import SERVER
from service.logs import REQUEST_ID_HEADER, AccessLogger, new_request_id
from service.settings import Settings

log = logging.getLogger(__name__)

# Header fields up to 16 KiB: aiohttp's default of 8 KiB would answer an oversized token with a
# plain-text 400 before any middleware runs; this lets it reach the token check instead.
MAX_HEADER_FIELD_BYTES = 16 * 1024
# How long aiohttp goes on reading a body no handler read (a 401, a 413, a 408) before closing,
# so that the client can still read the answer: its default of 10 s is a slow client's gift.
LINGERING_SECONDS = 2.0
# Descriptors a worker keeps for itself besides clients' connections: its pool, the listening
# socket, logs, metrics files.
RESERVED_DESCRIPTORS = 64


def _canned(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer with a problem document, for connections no handler will see."""
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    head = [
        f"HTTP/1.1 {status} {title}",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Server: {SERVER}",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_OVER_CAP = _canned(
    503, "Service Unavailable", "Too many connections; try again shortly.", {"Retry-After": "1"}
)
_HEAD_TOO_SLOW = _canned(408, "Request Timeout", "The request's head did not arrive in time.")


def handler_args(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection settings, for the test server and the real one alike."""
    return {
        "max_field_size": MAX_HEADER_FIELD_BYTES,
        "access_log_class": AccessLogger,
        "keepalive_timeout": settings.http_keepalive_timeout,
        "lingering_time": min(LINGERING_SECONDS, settings.http_keepalive_timeout),
    }


def connection_cap(settings: Settings) -> int:
    """MAX_CONNECTIONS, lowered to what the descriptor limit allows (raised to its hard limit
    first), so that accepting never fails for want of a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    allowed = soft - settings.db_pool_max_size - RESERVED_DESCRIPTORS
    if settings.max_connections > allowed:
        log.warning(
            "MAX_CONNECTIONS lowered to fit the descriptor limit",
            extra={"max_connections": max(allowed, 1), "descriptor_limit": soft},
        )
    return max(1, min(settings.max_connections, allowed))


class ConnectionGuard:
    """The protocol factory of a worker's listening socket: aiohttp's handler for each new
    connection while fewer than `cap` are open, a quick 503 for the rest."""

    def __init__(self, server: web.Server, settings: Settings, cap: int) -> None:
        self.server = server
        self.settings = settings
        self.cap = cap
        self.open = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.cap:
            return _Refused()
        return _Connection(self, **handler_args(self.settings))


class _Refused(asyncio.Protocol):
    """A connection over the cap: answered 503 at once, its input ignored, closed within a second."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes
        transport.write(_OVER_CAP)
        # Closing with the client's request unread would reset the connection, and the client
        # might never read the 503: send it, say we are done, then close soon.
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, counted against the cap, with a deadline for each request's
    head (HTTP_HEADER_TIMEOUT from its first byte), and its refusals of malformed requests
    logged as one warning without the request's bytes.

    aiohttp's own keep-alive timer already closes a connection that completes no request head
    within HTTP_KEEPALIVE_TIMEOUT of its start or its last answer; the head deadline is the
    shorter limit once a request has begun. It reads aiohttp's `_waiter`, pending exactly
    while aiohttp waits for the next complete head (tests/test_connections.py pins that).
    """

    def __init__(self, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(guard.server, loop=asyncio.get_running_loop(), **kwargs)
        self._guard = guard
        self._counted = False
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._guard.open -= 1
            self._counted = False
        self._stop_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if data and self._waiting_for_head():
            if self._head_deadline is None:
                timeout = self._guard.settings.http_header_timeout
                self._head_deadline = asyncio.get_running_loop().call_later(timeout, self._head_too_slow)
        else:
            self._stop_head_deadline()

    def _waiting_for_head(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._waiting_for_head() and self.transport is not None:
            log.info("closed a connection whose request head was too slow", extra={"status": 408})
            self.transport.write(_HEAD_TOO_SLOW)
            self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            # aiohttp's message quotes the raw request (tokens, passwords); a client can send
            # these at will, so a warning with the kind of error, no traceback, no content.
            log.warning("refused a malformed HTTP request", extra={"error": type(error).__name__})
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or handle: logged as above, answered
        with a problem document that does not echo the request (aiohttp's quotes it)."""
        self.log_exception("Error handling request", exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        title = HTTPStatus(status).phrase
        detail = "The request is not valid HTTP/1.1." if status == 400 else "The request failed."
        # Every answer carries a request id (openapi.yaml), this one too: a fresh one, since the
        # request's own could not be read.
        request_id = new_request_id()
        body = orjson.dumps(
            {
                "type": "about:blank",
                "title": title,
                "status": status,
                "detail": detail,
                "request_id": request_id,
            }
        )
        response = web.Response(
            status=status,
            body=body,
            content_type="application/problem+json",
            headers={"Server": SERVER, "X-Content-Type-Options": "nosniff", REQUEST_ID_HEADER: request_id},
        )
        response.force_close()
        return response
