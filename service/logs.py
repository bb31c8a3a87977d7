"""Logging: one JSON object (or one text line) per record, each carrying the request id."""

import contextvars
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from service.keys import REQUEST_ID, ROUTE, USER_ID

REQUEST_ID_HEADER = "X-Request-Id"
# A client's request id is echoed only when it is short and harmless in a log line or header.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its `extra` fields and the request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: in a text line,
# any of them from a request (a path with %0A) could end the line and forge the next record.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(value: object) -> str:
    return _CONTROL_CHARACTERS.sub(lambda match: match[0].encode("unicode_escape").decode(), str(value))


class TextFormatter(logging.Formatter):
    """Formats a record as one readable line, `extra` fields appended as key=value; control
    characters in any part are escaped, so one record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
        request_id = _request_id.get()
        if request_id is not None:
            fields["request_id"] = request_id
        line = _escaped(line + "".join(f" {key}={value}" for key, value in fields.items()))
        if record.exc_info:
            # A traceback stays readable on lines of its own, each indented, so none can pass
            # for a record.
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    {_escaped(trace_line)}" for trace_line in trace)
        return line


def configure_logging(level: int, log_format: str) -> None:
    """Send every log record to stdout in the chosen format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the client's, when it sent a sane one); add_request_id echoes it."""
    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    if not _CLIENT_REQUEST_ID.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    request[ROUTE] = request.match_info.route.name or "unmatched"
    token = _request_id.set(request_id)
    try:
        return await handler(request)
    finally:
        _request_id.reset(token)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the request id on every answer (an on_response_prepare signal, not the middleware:
    a streamed answer sends its headers from inside the handler, before the middleware sees it)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


class AccessLogger(AbstractAccessLogger):
    """One line per answered request: route, status, duration, request id and user."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.get(ROUTE)  # none for a request aiohttp could not even parse
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "request_id": request.get(REQUEST_ID),
                "user_id": request.get(USER_ID),
            },
        )
