"""Logging: one JSON object (or one text line) per record, each carrying the request id."""

import contextvars
import itertools
import logging
import os
import re
import sys
import time
from typing import IO, Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from service.keys import CREATED_TASK_ID, REQUEST_ID, ROUTE, USER_ID

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


class LineFormatter(logging.Formatter):
    """A record as one line: its time, level, logger and message, then its `extra` fields and the
    request id. Subclasses say how the line looks; `line` also serves the access log's fast path
    (LineHandler.write), which has fields but no LogRecord."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}
        exception = self.formatException(record.exc_info) if record.exc_info else None
        message = record.getMessage()
        return self.line(record.created, record.levelname, record.name, message, fields, exception)

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        exception: str | None,
    ) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    """Formats a record as one JSON object with its `extra` fields and the request id."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        # The date and time to the second change once a second; formatting them anew for each
        # of thousands of lines a second was a tenth of the cost of a line.
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        exception: str | None,
    ) -> str:
        entry = {"time": self._time(created), "level": level, "logger": logger, "message": message}
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        return orjson.dumps(entry, default=str).decode()


# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: in a text line,
# any of them from a request (a path with %0A) could end the line and forge the next record.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(value: object) -> str:
    return _CONTROL_CHARACTERS.sub(lambda match: match[0].encode("unicode_escape").decode(), str(value))


class TextFormatter(LineFormatter):
    """Formats a record as one readable line, `extra` fields appended as key=value; control
    characters in any part are escaped, so one record is always one line."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        exception: str | None,
    ) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        line = f"{when},{int((created - int(created)) * 1000):03d} {level:<7} {logger}: {message}"
        request_id = _request_id.get()
        if request_id is not None and "request_id" not in fields:
            fields = {**fields, "request_id": request_id}
        line = _escaped(line + "".join(f" {key}={value}" for key, value in fields.items()))
        if exception is not None:
            # A traceback stays readable on lines of its own, each indented, so none can pass
            # for a record.
            line += "".join(f"\n    {_escaped(trace_line)}" for trace_line in exception.splitlines())
        return line


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's one handler: records as lines on a stream, and `write`, the access log's
    way to the same stream without a LogRecord (a record, and the logging calls around it, were
    most of what an access line cost: a tenth of a small request's CPU)."""

    formatter: LineFormatter

    def __init__(self, stream: IO[str], formatter: LineFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)

    def write(self, level: str, logger: str, message: str, fields: dict[str, Any]) -> None:
        line = self.formatter.line(time.time(), level, logger, message, fields, None)
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(line + self.terminator)
            self.stream.flush()


def configure_logging(level: int, log_format: str, stream: IO[str] | None = None) -> None:
    """Send every log record to stdout (or `stream`) in the chosen format."""
    # Neither format shows the thread, the process or the caller's file and line; not finding
    # them out makes each record (one a request, at least) a third cheaper. These are the
    # switches the logging HOWTO names for this ("Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    root = logging.getLogger()
    root.handlers[:] = [LineHandler(stream or sys.stdout, formatter)]
    root.setLevel(level)


# Generated request ids: this process's random prefix and a count, unique without asking the
# operating system for randomness on every request (uuid4 did, at 3% of a small request's CPU).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """An id no other request of any worker has had: a per-process random prefix and a count."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _reseed_request_ids() -> None:
    global _ID_PREFIX, _id_counter
    _ID_PREFIX = os.urandom(8).hex()
    _id_counter = itertools.count(1)


# A worker forked from the parent must not repeat the parent's (or a sibling's) ids.
os.register_at_fork(after_in_child=_reseed_request_ids)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the client's, when it sent a sane one); add_request_id echoes it."""
    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    if not _CLIENT_REQUEST_ID.fullmatch(request_id):
        request_id = new_request_id()
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
    """One line per answered request: route, status, duration, request id, user and the task
    it read or wrote (the one line a task write leaves)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.get(ROUTE)  # none for a request aiohttp could not even parse
        task_id = request.get(CREATED_TASK_ID)
        if task_id is None and route is not None and isinstance(request, web.Request):
            in_path = request.match_info.get("task_id", "")
            # A path's id is digits (the route says so), but an int has at most 18 of them.
            task_id = int(in_path) if 0 < len(in_path) <= 18 else None
        fields = {
            "route": route,
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "request_id": request.get(REQUEST_ID),
            "user_id": request.get(USER_ID),
            "task_id": task_id,
        }
        message = f"{request.method} {request.path} {response.status}"
        handler = _only_handler(self.logger)
        if handler is not None:
            handler.write("INFO", self.logger.name, message, fields)
        else:  # someone added a handler (a test capturing records): the ordinary way
            self.logger.info("%s", message, extra=fields)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _only_handler(logger: logging.Logger) -> LineHandler | None:
    """The service's LineHandler when it is the only place `logger`'s records go, else None."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    handlers = logging.root.handlers
    if len(handlers) != 1 or logging.root.filters:
        return None
    handler = handlers[0]
    return handler if isinstance(handler, LineHandler) and not handler.filters else None
