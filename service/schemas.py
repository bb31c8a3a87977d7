"""Request and response bodies: marshmallow schemas, and reading and writing JSON with them."""

import asyncio
import functools
import importlib.resources
from collections.abc import Mapping, Sized
from datetime import date, datetime
from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema
from yarl import URL

from service.auth import BIGINT_MAX
from service.errors import Problem
from service.keys import SETTINGS
from service.listing import DEFAULT_ORDER

JSON_CONTENT_TYPE = "application/json"


class Length(validate.Length):
    """A length check whose message names the bound that failed, in characters or items:
    "Must have at least 8 characters.", where marshmallow says "Length must be between 8 and 256."."""

    def __init__(self, min: int | None = None, max: int | None = None, *, unit: str = "characters") -> None:
        super().__init__(min, max)
        self.unit = unit

    def __call__(self, value: Sized) -> Any:
        if self.min is not None and len(value) < self.min:
            raise ValidationError(
                "Must not be empty." if self.min == 1 else f"Must have at least {self.min} {self.unit}."
            )
        if self.max is not None and len(value) > self.max:
            raise ValidationError(f"Must have at most {self.max} {self.unit}.")
        return value


def in_range(low: int, high: int) -> validate.Range:
    return validate.Range(min=low, max=high, error=f"Must be from {low} to {high}.")


class Text(fields.String):
    """A string PostgreSQL can store: text columns cannot hold the NUL character."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain the NUL character.")
        return text


class StrictBoolean(fields.Boolean):
    """A JSON true or false, never a string or a number."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class StrictInteger(fields.Integer):
    """A JSON integer, never a string, a boolean or a fraction; 2.0 is one, as JSON Schema says."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError("Must be an integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class DateTime(fields.AwareDateTime):
    """An RFC 3339 date-time with an offset, its year as written from 1900 to 8999: far enough
    from the ends of what PostgreSQL and Python can hold that a time zone or a repeat rule
    never pushes it past them."""

    def __init__(self, **kwargs: Any) -> None:
        invalid = "Must be a date-time with an offset, such as 2025-12-31T09:00:00Z."
        messages: dict[str, Any] = {"invalid": invalid, "invalid_awareness": invalid}
        super().__init__(format="iso", validate=_year_in_range, error_messages=messages, **kwargs)


def _year_in_range(value: date) -> None:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValidationError(f"The year must be from {FIRST_YEAR} to {LAST_YEAR}.")


FIRST_YEAR, LAST_YEAR = 1900, 8999


class WrittenDateTime(fields.Field[datetime | date]):
    """A date-time as people and forms write it: with an offset (`2025-12-31T23:59:59+01:00`),
    an instant, an aware datetime; without one (`2025-12-31T23:59:59`), a wall-clock time in
    the user's zone, a naive datetime, which the SQL places in that zone. With `dates`, also a
    plain date (`2025-12-31`), a date: an all-day task. ISO 8601 as Python reads it, as before;
    the year as written from 1900 to 8999, as DateTime."""

    def __init__(self, *, dates: bool = False, **kwargs: Any) -> None:
        super().__init__(validate=_year_in_range, **kwargs)
        self.dates = dates

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime | date:
        if isinstance(value, str):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                pass
            else:
                if not self.dates:
                    raise ValidationError("Give a time with the date, such as 2025-12-31T09:00:00.")
                return day
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        example = "2025-12-31T09:00:00+01:00, or 2025-12-31T09:00:00 in your time zone"
        if self.dates:
            example += ", or 2025-12-31 for the whole day"
        raise ValidationError(f"Must be a date-time such as {example}.")


def instant_or_wall_clock(
    value: datetime | date | None,
) -> tuple[datetime | None, datetime | None, date | None]:
    """A written date-time as the SQL takes it: (an instant, a wall-clock time in the user's
    zone, an all-day date), at most one of them not None."""
    if isinstance(value, datetime):
        return (value, None, None) if value.tzinfo is not None else (None, value, None)
    return None, None, value


PRIORITIES = {"low": 0, "medium": 1, "high": 2}


class Priority(fields.Field[int]):
    """low, medium or high in JSON; 0, 1 or 2 in the database, so that it sorts."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or value not in PRIORITIES:
            raise ValidationError("Must be one of: low, medium, high.")
        return PRIORITIES[value]

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else _PRIORITY_NAMES[value]


_PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}
MAX_TAGS = 20


def normalise_tag(value: Any) -> str:
    """A tag checked (1 to 50 characters, not blank, no NUL) and trimmed."""
    if not isinstance(value, str):
        raise ValidationError("Each tag must be a string.")
    if not 1 <= len(value) <= 50 or "\x00" in value or not value.strip(WHITESPACE):
        raise ValidationError("Each tag must have 1 to 50 characters, not all blank, and no NUL.")
    return value.strip(WHITESPACE)


class Tags(fields.Field[list[str]]):
    """Up to 20 tags, trimmed, unique regardless of case (the first spelling wins), sorted."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValidationError("Must be a list of strings.")
        if len(value) > MAX_TAGS:
            raise ValidationError(f"At most {MAX_TAGS} tags.")
        unique: dict[str, str] = {}
        for item in value:
            tag = normalise_tag(item)
            unique.setdefault(tag.lower(), tag)
        return [unique[key] for key in sorted(unique)]


# Blank means only these: ECMAScript's whitespace and line terminators, which JSON Schema's
# regular expressions (and so openapi.yaml's patterns) use. Python's own str.strip() differs.
WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def not_blank(value: str) -> None:
    if value and not value.strip(WHITESPACE):  # empty is the length check's to say
        raise ValidationError("Must not be blank.")


def lower_camel(name: str) -> str:
    """A snake_case name in lowerCamelCase, as protocol buffers' JSON mapping spells a field:
    due_date -> dueDate."""
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


class RequestBody(Schema):
    """A JSON request body. Every schema of one derives from this, which is the one place that
    lets each field also be spelled in lowerCamelCase (`dueDate` for `due_date`): giving both
    spellings of one field is an error, a field unknown in both is one as ever, errors name each
    field as the client spelled it, and answers stay snake_case."""

    error_messages = {  # noqa: RUF012 - marshmallow reads it from the class
        "unknown": "Not a field of this request.",
        "type": "Must be a JSON object.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # camelCase spelling -> field name, for the fields whose spellings differ
        self.snake_names = {lower_camel(name): name for name in self.load_fields if lower_camel(name) != name}

    @pre_load
    def accept_camel_case(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, Mapping) or not self.snake_names:
            return data  # not an object: the type check that follows refuses it
        renamed = {}
        for key, value in data.items():
            name = self.snake_names.get(key, key)
            if name != key and name in data:
                raise ValidationError({key: [f"Also given as {name}; give one of the two."]})
            renamed[name] = value
        return renamed

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        """Name each failing field as the client spelled it."""
        if not isinstance(data, Mapping) or not isinstance(error.messages, dict):
            return
        spelled = {name: key for key, name in self.snake_names.items() if key in data}
        if spelled.keys() & error.messages.keys():
            messages = {spelled.get(name, name): value for name, value in error.messages.items()}
            raise ValidationError(messages, data=data, valid_data=error.valid_data)


class Recurrence(RequestBody):
    every = fields.String(required=True, validate=validate.OneOf(["day", "week", "month", "year"]))
    interval = StrictInteger(load_default=1, validate=in_range(1, 365))


class TaskFields(RequestBody):
    """The fields a client may write; `recurrence` becomes the two columns that store it, and
    `due_date` and `remind_at` the forms the SQL takes (instant_or_wall_clock)."""

    title = Text(validate=[Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, validate=Length(max=1000))
    completed = StrictBoolean()
    priority = Priority()
    tags = Tags()
    due_date = WrittenDateTime(dates=True, allow_none=True)
    remind_at = WrittenDateTime(allow_none=True)
    recurrence = fields.Nested(Recurrence, allow_none=True)

    @post_load
    def store_columns(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "recurrence" in data:
            rule = data.pop("recurrence")
            data["recurrence_every"] = rule["every"] if rule else None
            data["recurrence_interval"] = rule["interval"] if rule else None
        if "due_date" in data:
            data["due_date"], data["due_local"], data["due_on"] = instant_or_wall_clock(data["due_date"])
        if "remind_at" in data:
            data["remind_at"], data["remind_local"], _ = instant_or_wall_clock(data["remind_at"])
        return data


class TaskCreate(TaskFields):
    title = Text(required=True, validate=[Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, load_default=None, validate=Length(max=1000))
    completed = StrictBoolean(load_default=False)
    priority = Priority(load_default=PRIORITIES["medium"])
    tags = Tags(load_default=list)
    due_date = WrittenDateTime(dates=True, allow_none=True, load_default=None)
    remind_at = WrittenDateTime(allow_none=True, load_default=None)
    recurrence = fields.Nested(Recurrence, allow_none=True, load_default=None)


class TaskUpdate(TaskFields):
    @validates_schema
    def has_a_field(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class TaskComplete(RequestBody):
    completed = StrictBoolean()


def task_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A task row as clients see it. A plain function, not a schema: marshmallow takes 2.8 ms
    for a page of 100 tasks (the OpenAPI tests pin the shape), and the timestamps are left to
    orjson, which writes them in C (json_response). An all-day task's due date is its date."""
    every = row["recurrence_every"]
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "title": row["title"],
        "description": row["description"],
        "completed": row["completed"],
        "priority": _PRIORITY_NAMES[row["priority"]],
        "tags": row["tags"],
        "due_date": row["due_on"] or row["due_date"],
        "remind_at": row["remind_at"],
        "recurrence": {"every": every, "interval": row["recurrence_interval"]} if every else None,
        "completed_at": row["completed_at"],
        "next_task_id": row["next_task_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


class QueryString(Schema):
    """A query string: snake_case names only (they are the spec's); parameters in REPEATABLE may
    be given more than once, the rest at most once (load_query)."""

    REPEATABLE: frozenset[str] = frozenset()


class TaskListQuery(QueryString):
    """The query string of GET /api/{user_id}/tasks. Its names stay snake_case only: they are
    the spec's, and the lowerCamelCase spellings are the JSON mapping's, for bodies."""

    error_messages = {"unknown": "Not a parameter of this request."}  # noqa: RUF012 - as above

    status = fields.String(load_default="all", validate=validate.OneOf(["all", "pending", "completed"]))
    priority = fields.List(Priority(), validate=Length(max=3, unit="values"))
    tag = fields.List(
        fields.Function(deserialize=normalise_tag), validate=Length(max=MAX_TAGS, unit="values")
    )
    q = Text(validate=Length(min=1, max=200))
    due_before = DateTime()
    due_after = DateTime()
    overdue = fields.Boolean(truthy={"true"}, falsy={"false"})
    sort = fields.String(load_default="created", validate=validate.OneOf(list(DEFAULT_ORDER)))
    order = fields.String(validate=validate.OneOf(["asc", "desc"]))
    limit = fields.Integer(validate=in_range(1, 200))  # without it (and a cursor), every task
    cursor = fields.String(validate=Length(max=1024))

    # Parameters that may be given more than once (?tag=a&tag=b); the rest at most once.
    REPEATABLE = frozenset({"priority", "tag"})


class Batch(RequestBody):
    operations = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=100))


class _Operation(RequestBody):
    op = fields.String(required=True)
    if_match = Text(validate=validate.Length(min=1, max=1024))


class _OnTask(_Operation):
    id = StrictInteger(required=True, validate=validate.Range(min=1, max=2**63 - 1))


class CreateOperation(_Operation):
    task = fields.Nested(TaskCreate, required=True)


class UpdateOperation(_OnTask):
    task = fields.Nested(TaskUpdate, required=True)


class CompleteOperation(_OnTask):
    completed = StrictBoolean()


class DeleteOperation(_OnTask):
    pass


class ChangesQuery(QueryString):
    """The query string of GET /api/{user_id}/changes."""

    since = fields.String(validate=validate.Length(min=1, max=1024))
    limit = fields.Integer(load_default=500, validate=validate.Range(min=1, max=1000))
    wait = fields.Integer(validate=validate.Range(min=1, max=60))


class TrashQuery(QueryString):
    """The query string of GET /api/{user_id}/trash."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=1024))


# The IANA zone names, as the tzdata package lists them: the list zoneinfo itself reads, and the
# same on every host (the host's own zoneinfo folder may add names such as `localtime`).
TIME_ZONES = frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split())


def known_time_zone(name: str) -> None:
    if name not in TIME_ZONES:
        raise ValidationError("Not a time zone; give an IANA name such as Europe/Berlin or UTC.")


class Register(RequestBody):
    email = fields.Email(required=True, validate=Length(max=254))
    password = Text(required=True, validate=Length(min=8, max=256))
    name = Text(required=True, validate=[Length(min=1, max=100), not_blank])
    time_zone = Text(load_default="UTC", validate=known_time_zone)


class Login(RequestBody):
    email = Text(required=True, validate=Length(min=1, max=254))
    password = Text(required=True, validate=Length(min=1, max=256))


class AccountUpdate(RequestBody):
    name = Text(validate=[Length(min=1, max=100), not_blank])
    time_zone = Text(validate=known_time_zone)

    @validates_schema
    def has_a_field(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class Refresh(RequestBody):
    refresh_token = Text(required=True, validate=validate.Length(min=1, max=200))


class PasswordChange(RequestBody):
    current_password = Text(required=True, validate=validate.Length(min=1, max=256))
    new_password = Text(required=True, validate=validate.Length(min=8, max=256))


class ApiTokenCreate(RequestBody):
    name = Text(required=True, validate=[validate.Length(min=1, max=100), not_blank])
    scopes = fields.List(
        fields.String(validate=validate.OneOf(["tasks:read", "tasks:write"])),
        required=True,
        validate=validate.Length(min=1, max=2),
    )
    expires_in_days = StrictInteger(
        allow_none=True, load_default=None, validate=validate.Range(min=1, max=3650)
    )

    @validates_schema
    def scopes_once(self, data: dict[str, Any], **kwargs: Any) -> None:
        if len(set(data["scopes"])) != len(data["scopes"]):
            raise ValidationError("Give each scope once.", "scopes")

    @post_load
    def sort_scopes(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["scopes"] = sorted(data["scopes"])
        return data


class AccountDeletion(RequestBody):
    """A password account confirms with its password; a provider's user sends none."""

    password = Text(validate=validate.Length(min=1, max=256))


# What a webhook may subscribe to; webhook.test is sent only on request.
WEBHOOK_EVENT_TYPES = ("task.created", "task.updated", "task.completed", "task.deleted", "task.reminder")


class WebhookFields(RequestBody):
    """A subscription's fields; the URL's address is checked by the handler (service/ssrf.py)."""

    url = Text(validate=Length(min=1, max=2000))
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENT_TYPES)),
        validate=Length(min=1, max=len(WEBHOOK_EVENT_TYPES), unit="events"),
    )
    description = Text(allow_none=True, validate=Length(max=500))

    @validates_schema
    def events_once(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "events" in data and len(set(data["events"])) != len(data["events"]):
            raise ValidationError("Give each event once.", "events")

    @post_load
    def sort_events(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "events" in data:
            data["events"] = sorted(data["events"], key=WEBHOOK_EVENT_TYPES.index)
        return data


class WebhookCreate(WebhookFields):
    url = Text(required=True, validate=Length(min=1, max=2000))
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENT_TYPES)),
        required=True,
        validate=Length(min=1, max=len(WEBHOOK_EVENT_TYPES), unit="events"),
    )
    description = Text(allow_none=True, load_default=None, validate=Length(max=500))


class WebhookUpdate(WebhookFields):
    enabled = StrictBoolean()

    @validates_schema
    def has_a_field(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class WebhookDeliveriesQuery(QueryString):
    """The query string of GET /api/{user_id}/webhooks/{id}/deliveries."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


def webhook_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A subscription as its owner sees it, without its secret (shown once, when it is made)."""
    fields = ("id", "url", "events", "description", "enabled", "disabled_reason", "created_at")
    return {name: row[name] for name in fields}


def api_token_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An API token as its owner sees it, without its secret (shown once, when it is made)."""
    fields = ("id", "name", "scopes", "created_at", "expires_at", "last_used_at")
    return {name: row[name] for name in fields}


def user_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An account as clients see it: never its password hash."""
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "time_zone": row["time_zone"],
        "created_at": row["created_at"],
    }


TASK_LIST_QUERY = TaskListQuery()
TASK_CREATE = TaskCreate()
TASK_UPDATE = TaskUpdate()
TASK_COMPLETE = TaskComplete()
BATCH = Batch()
# Each batch operation's schema, by its `op`.
BATCH_OPERATIONS = {
    "create": CreateOperation(),
    "update": UpdateOperation(),
    "complete": CompleteOperation(),
    "delete": DeleteOperation(),
}
CHANGES_QUERY = ChangesQuery()
TRASH_QUERY = TrashQuery()
REGISTER = Register()
LOGIN = Login()
REFRESH = Refresh()
PASSWORD_CHANGE = PasswordChange()
ACCOUNT_UPDATE = AccountUpdate()
API_TOKEN_CREATE = ApiTokenCreate()
ACCOUNT_DELETION = AccountDeletion()
WEBHOOK_CREATE = WebhookCreate()
WEBHOOK_UPDATE = WebhookUpdate()
WEBHOOK_DELIVERIES_QUERY = WebhookDeliveriesQuery()


def _is_json(content_type: str) -> bool:
    return content_type == JSON_CONTENT_TYPE or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def load_body(request: web.Request, schema: RequestBody) -> dict[str, Any]:
    """The request's JSON object, validated by `schema`; a 4xx problem when it is not one."""
    if not _is_json(request.content_type):
        raise Problem(415, f"The request body must be {JSON_CONTENT_TYPE}.")
    raw = await _read_body(request)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        # Bad syntax, bad UTF-8, a lone surrogate (PostgreSQL cannot store one), nesting too deep.
        where = f"line {error.lineno}, column {error.colno}"
        raise Problem(400, f"The request body is not valid UTF-8 JSON (at {where}).") from None
    if not isinstance(document, dict):
        raise Problem(400, "The request body must be a JSON object.")
    result: dict[str, Any] = schema.load(document)
    return result


async def _read_body(request: web.Request) -> bytes:
    """The whole body (aiohttp answers 413 past client_max_size) within HTTP_BODY_TIMEOUT: a body
    sent a byte at a time would otherwise hold its connection for ever. 408 past it."""
    if request.content.is_eof():  # it came with the head, as small bodies do: no timer to arm
        return await request.read()
    try:
        async with asyncio.timeout(request.app[SETTINGS].http_body_timeout):
            return await request.read()
    except TimeoutError:
        raise Problem(408, "The request body did not arrive in time.") from None


def load_query(request: web.Request, schema: QueryString) -> dict[str, Any]:
    """The query string, validated by `schema`; a parameter given twice must be repeatable.

    Clients ask for the same few query strings again and again (a list's is most often empty),
    and loading one through marshmallow was 3% of a list request: the loaded values of recent
    ones are kept, keyed by the raw string, and each caller gets its own copy of the dict."""
    return dict(_loaded_query(schema, request.rel_url.raw_query_string))


@functools.lru_cache(maxsize=1024)
def _loaded_query(schema: QueryString, raw_query_string: str) -> dict[str, Any]:
    query = URL.build(query_string=raw_query_string, encoded=True).query  # as aiohttp reads it
    given: dict[str, Any] = {}
    for name in query:
        values = query.getall(name)
        if name in schema.REPEATABLE:
            given[name] = values
        elif len(values) > 1:
            raise ValidationError({name: ["Give this parameter at most once."]})
        else:
            given[name] = values[0]
    result: dict[str, Any] = schema.load(given)
    return result


def path_id(request: web.Request, name: str) -> int | None:
    """The id in the path segment `name` (its route lets only digits through), or None for one
    beyond bigint, which no row has: PostgreSQL would refuse it, and int() 4,300 digits."""
    raw = request.match_info[name]
    if len(raw) > len(str(BIGINT_MAX)) or int(raw) > BIGINT_MAX:
        return None
    return int(raw)


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer, serialised with orjson; datetimes (always UTC from asyncpg) as RFC 3339
    with `Z`, and with microseconds unless they are zero."""
    body = orjson.dumps(data, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type=JSON_CONTENT_TYPE, headers=headers)
