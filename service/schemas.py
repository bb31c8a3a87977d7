"""Request and response bodies: marshmallow schemas, and reading and writing JSON with them."""

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.errors import Problem

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


class UtcDateTime(fields.Field[datetime]):
    """An RFC 3339 timestamp in UTC with a `Z`, e.g. 2026-01-31T09:30:00.123456Z."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


class TaskCreate(Schema):
    title = Text(required=True, validate=[validate.Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, load_default=None, validate=validate.Length(max=1000))
    completed = StrictBoolean(load_default=False)


class TaskUpdate(Schema):
    title = Text(validate=[validate.Length(min=1, max=255), not_blank])
    description = Text(allow_none=True, validate=validate.Length(max=1000))
    completed = StrictBoolean()

    @validates_schema
    def has_a_field(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one of title, description, completed.")


class TaskComplete(Schema):
    completed = StrictBoolean()


class Task(Schema):
    id = fields.Integer()
    user_id = fields.Integer()
    title = fields.String()
    description = fields.String(allow_none=True)
    completed = fields.Boolean()
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class Register(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = Text(required=True, validate=validate.Length(min=8, max=256))
    name = Text(required=True, validate=[validate.Length(min=1, max=100), not_blank])


class Login(Schema):
    email = Text(required=True, validate=validate.Length(min=1, max=254))
    password = Text(required=True, validate=validate.Length(min=1, max=256))


class User(Schema):
    id = fields.Integer()
    email = fields.String()
    name = fields.String()
    created_at = UtcDateTime()


class TokenGrant(Schema):
    user = fields.Nested(User)
    access_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()


TASK_CREATE = TaskCreate()
TASK_UPDATE = TaskUpdate()
TASK_COMPLETE = TaskComplete()
TASK = Task()
REGISTER = Register()
LOGIN = Login()
USER = User()
TOKEN_GRANT = TokenGrant()


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


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer, serialised with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type=JSON_CONTENT_TYPE, headers=headers
    )
