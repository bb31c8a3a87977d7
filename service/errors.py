"""Every error the service answers, as an RFC 9457 application/problem+json document."""

import logging
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, cast

import asyncpg
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from marshmallow import ValidationError

from service.db import UNAVAILABLE_ERRORS
from service.keys import REQUEST_ID, SETTINGS
from service.metrics import DB_ERRORS

PROBLEM_CONTENT_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "2"
CLIENT_CLOSED_REQUEST = 499

log = logging.getLogger(__name__)


class Problem(Exception):
    """An error answer: raise it anywhere in a request and the middleware sends it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def problem_response(request: web.Request, problem: Problem) -> web.Response:
    """The problem+json answer for `problem`, with the request id to quote to support."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        "request_id": request.get(REQUEST_ID, ""),
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    return web.Response(
        status=problem.status,
        body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),  # list errors are keyed by index
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


# What aiohttp's own HTTP errors mean, said for a client, and the headers they keep.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
_HTTP_DETAILS = {
    401: "Valid credentials are required.",
    404: "There is no resource at this URL.",
    405: "This URL does not accept the {method} method.",
    413: "The request body is larger than the {limit} bytes allowed.",
}


MAX_DETAIL_SENTENCES = 10


def validation_detail(errors: Mapping[Any, Any]) -> str:
    """What is wrong with each failing field, in sentences a frontend can show as they are:
    "password: must have at least 8 characters." (`errors` keeps the whole map)."""
    sentences = list(dict.fromkeys(_sentences(errors, "")))  # once each, in order
    if len(sentences) > MAX_DETAIL_SENTENCES:
        more = len(sentences) - MAX_DETAIL_SENTENCES
        sentences[MAX_DETAIL_SENTENCES:] = [f"And {more} more; see errors."]
    return " ".join(sentences) or "The request is invalid."


def _sentences(errors: Mapping[Any, Any], field: str) -> Iterator[str]:
    for key, value in errors.items():
        # "_schema" is about the object as a whole; a number is an item of a list field.
        name = field if key == "_schema" or isinstance(key, int) else f"{field}.{key}".lstrip(".")
        if isinstance(value, Mapping):
            yield from _sentences(value, name)
            continue
        for message in value if isinstance(value, list) else [value]:
            text = str(message)
            if name:
                # "Must have..." reads "password: must have..."; an initialism keeps its case.
                text = f"{name}: {text[:1].lower() + text[1:] if text[1:2].islower() else text}"
            yield text if text.endswith(".") else text + "."


def _from_http_exception(request: web.Request, error: web.HTTPException) -> Problem:
    headers = {name: error.headers[name] for name in _KEPT_HEADERS if name in error.headers}
    template = _HTTP_DETAILS.get(error.status, HTTPStatus(error.status).description + ".")
    detail = template.format(method=request.method, limit=request.app[SETTINGS].max_body_bytes)
    return Problem(error.status, detail, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of a request into a problem+json answer that reveals nothing internal."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(request, problem)
    except ValidationError as error:
        errors = cast(dict[str, Any], error.normalized_messages())  # type: ignore[no-untyped-call]
        return problem_response(request, Problem(400, validation_detail(errors), errors=errors))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return problem_response(request, _from_http_exception(request, error))
    except UNAVAILABLE_ERRORS as error:
        kind = type(error.__cause__ or error).__name__
        DB_ERRORS.labels(kind).inc()
        log.warning("database unavailable: %s", kind)
        return problem_response(
            request,
            Problem(
                503,
                "The database is unavailable; try again shortly.",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ),
        )
    except Exception as error:
        if isinstance(error, ConnectionResetError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # The client went away (an upload cut short, a reset mid-answer): nothing failed
            # here, and no one is left to answer. 499, as nginx logs it.
            log.info("the client closed the connection before it was answered")
            return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
        if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
            DB_ERRORS.labels(type(error).__name__).inc()
        log.exception("unhandled error")
        return problem_response(request, Problem(500, "An unexpected error occurred."))
