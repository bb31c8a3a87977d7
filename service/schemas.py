"""Request and response bodies: marshmallow schemas, and reading and writing JSON with them."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.errors import Problem
from service.listing import DEFAULT_ORDER

JSON_CONTENT_TYPE = "application/json"


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
        super().__init__(format="iso", validate=_year_in_range, **kwargs)


def _year_in_range(value: datetime) -> None:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValidationError(f"The year must be from {FIRST_YEAR} to {LAST_YEAR}.")


FIRST_YEAR, LAST_YEAR = 1900, 8999


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
    if not value.strip(WHITESPACE):
        raise ValidationError("Must not be blank.")


class Recurrence(Schema):
    every = fields.String(required=True, validate=validate.OneOf(["day", "week", "month", "year"]))
    interval = StrictInteger(load_default=1, validate=validate.Range(min=1, max=365))


class TaskFields(Schema):
    """The fields a client may write; `recurrence` becomes the two columns that store it."""

    title = Text(validate=[validate.Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, validate=validate.Length(max=1000))
    completed = StrictBoolean()
    priority = Priority()
    tags = Tags()
    due_date = DateTime(allow_none=True)
    remind_at = DateTime(allow_none=True)
    recurrence = fields.Nested(Recurrence, allow_none=True)

    @post_load
    def store_recurrence(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "recurrence" in data:
            rule = data.pop("recurrence")
            data["recurrence_every"] = rule["every"] if rule else None
            data["recurrence_interval"] = rule["interval"] if rule else None
        return data


class TaskCreate(TaskFields):
    title = Text(required=True, validate=[validate.Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, load_default=None, validate=validate.Length(max=1000))
    completed = StrictBoolean(load_default=False)
    priority = Priority(load_default=PRIORITIES["medium"])
    tags = Tags(load_default=list)
    due_date = DateTime(allow_none=True, load_default=None)
    remind_at = DateTime(allow_none=True, load_default=None)
    recurrence = fields.Nested(Recurrence, allow_none=True, load_default=None)


class TaskUpdate(TaskFields):
    @validates_schema
    def has_a_field(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class TaskComplete(Schema):
    completed = StrictBoolean()


def task_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A task row as clients see it. A plain function, not a schema: marshmallow takes 2.8 ms
    for a page of 100 tasks (the OpenAPI tests pin the shape), and the timestamps are left to
    orjson, which writes them in C (json_response)."""
    every = row["recurrence_every"]
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "title": row["title"],
        "description": row["description"],
        "completed": row["completed"],
        "priority": _PRIORITY_NAMES[row["priority"]],
        "tags": row["tags"],
        "due_date": row["due_date"],
        "remind_at": row["remind_at"],
        "recurrence": {"every": every, "interval": row["recurrence_interval"]} if every else None,
        "completed_at": row["completed_at"],
        "next_task_id": row["next_task_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


class TaskListQuery(Schema):
    """The query string of GET /api/{user_id}/tasks."""

    status = fields.String(load_default="all", validate=validate.OneOf(["all", "pending", "completed"]))
    priority = fields.List(Priority(), validate=validate.Length(max=3))
    tag = fields.List(fields.Function(deserialize=normalise_tag), validate=validate.Length(max=MAX_TAGS))
    q = Text(validate=validate.Length(min=1, max=200))
    due_before = DateTime()
    due_after = DateTime()
    overdue = fields.Boolean(truthy={"true"}, falsy={"false"})
    sort = fields.String(load_default="created", validate=validate.OneOf(list(DEFAULT_ORDER)))
    order = fields.String(validate=validate.OneOf(["asc", "desc"]))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=1024))

    # Parameters that may be given more than once (?tag=a&tag=b); the rest at most once.
    REPEATABLE = frozenset({"priority", "tag"})


class Register(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = Text(required=True, validate=validate.Length(min=8, max=256))
    name = Text(required=True, validate=[validate.Length(min=1, max=100), not_blank])


class Login(Schema):
    email = Text(required=True, validate=validate.Length(min=1, max=254))
    password = Text(required=True, validate=validate.Length(min=1, max=256))


class Refresh(Schema):
    refresh_token = Text(required=True, validate=validate.Length(min=1, max=200))


class PasswordChange(Schema):
    current_password = Text(required=True, validate=validate.Length(min=1, max=256))
    new_password = Text(required=True, validate=validate.Length(min=8, max=256))


class ApiTokenCreate(Schema):
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


class AccountDeletion(Schema):
    """A password account confirms with its password; a provider's user sends none."""

    password = Text(validate=validate.Length(min=1, max=256))


def api_token_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An API token as its owner sees it, without its secret (shown once, when it is made)."""
    fields = ("id", "name", "scopes", "created_at", "expires_at", "last_used_at")
    return {name: row[name] for name in fields}


def user_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An account as clients see it: never its password hash."""
    return {"id": row["id"], "email": row["email"], "name": row["name"], "created_at": row["created_at"]}


TASK_LIST_QUERY = TaskListQuery()
TASK_CREATE = TaskCreate()
TASK_UPDATE = TaskUpdate()
TASK_COMPLETE = TaskComplete()
REGISTER = Register()
LOGIN = Login()
REFRESH = Refresh()
PASSWORD_CHANGE = PasswordChange()
API_TOKEN_CREATE = ApiTokenCreate()
ACCOUNT_DELETION = AccountDeletion()


def _is_json(content_type: str) -> bool:
    return content_type == JSON_CONTENT_TYPE or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def load_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    """The request's JSON object, validated by `schema`; a 4xx problem when it is not one."""
    if not _is_json(request.content_type):
        raise Problem(415, f"The request body must be {JSON_CONTENT_TYPE}.")
    raw = await request.read()  # aiohttp answers 413 past client_max_size
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


def load_query(request: web.Request, schema: TaskListQuery) -> dict[str, Any]:
    """The query string, validated by `schema`; a parameter given twice must be repeatable."""
    given: dict[str, Any] = {}
    for name in request.query:
        values = request.query.getall(name)
        if name in schema.REPEATABLE:
            given[name] = values
        elif len(values) > 1:
            raise ValidationError({name: ["Give this parameter at most once."]})
        else:
            given[name] = values[0]
    result: dict[str, Any] = schema.load(given)
    return result


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer, serialised with orjson; datetimes (always UTC from asyncpg) as RFC 3339
    with `Z`, and with microseconds unless they are zero."""
    body = orjson.dumps(data, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type=JSON_CONTENT_TYPE, headers=headers)
