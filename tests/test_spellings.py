"""Field spellings: every request body field also in lowerCamelCase, as the JSON mapping of
protocol buffers spells it; both spellings of one field, or a field unknown in both, is a 400;
answers stay snake_case."""

import pytest
from marshmallow import ValidationError, fields

from service import schemas
from service.schemas import RequestBody
from tests.conftest import ApiClient, User

REGISTRATION = {"email": "camel@example.com", "password": "analytical engine", "name": "Ada"}


async def test_a_task_may_be_written_in_camel_case_and_is_answered_in_snake_case(
    api: ApiClient, alice: User
) -> None:
    created = await api.post(
        alice.tasks,
        token=alice.token,
        json={"title": "t", "dueDate": "2026-03-01T09:00:00Z", "remindAt": "2026-03-01T08:00:00Z"},
    )
    assert created.status == 201, created.json
    assert (created.json["due_date"], created.json["remind_at"]) == (
        "2026-03-01T09:00:00Z",
        "2026-03-01T08:00:00Z",
    )
    assert "dueDate" not in created.json and "remindAt" not in created.json
    url = f"{alice.tasks}/{created.json['id']}"
    changed = await api.put(url, token=alice.token, json={"dueDate": "2026-04-01", "remindAt": None})
    assert changed.status == 200
    assert (changed.json["due_date"], changed.json["remind_at"]) == ("2026-04-01", None)


async def test_the_zone_may_be_written_in_camel_case(api: ApiClient, alice: User) -> None:
    registered = await api.post("/api/auth/register", json={**REGISTRATION, "timeZone": "Asia/Kolkata"})
    assert registered.status == 201 and registered.json["user"]["time_zone"] == "Asia/Kolkata"
    changed = await api.patch("/api/auth/me", token=alice.token, json={"timeZone": "Europe/Berlin"})
    assert changed.status == 200 and changed.json["time_zone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("tasks", {"title": "t", "due_date": "2026-03-01", "dueDate": "2026-03-01"}, "dueDate"),
        ("tasks", {"title": "t", "remindAt": None, "remind_at": None}, "remindAt"),
        ("me", {"time_zone": "UTC", "timeZone": "UTC"}, "timeZone"),
    ],
)
async def test_one_field_in_both_spellings_is_a_400(
    api: ApiClient, alice: User, path: str, body: dict, named: str
) -> None:
    url = alice.tasks if path == "tasks" else "/api/auth/me"
    answer = await (api.post if path == "tasks" else api.patch)(url, token=alice.token, json=body)
    assert answer.status == 400 and list(answer.json["errors"]) == [named]


@pytest.mark.parametrize("field", ["DueDate", "due-date", "duedate", "dueDATE", "due_Date", "Title", "tItle"])
async def test_fields_unknown_in_both_spellings_stay_a_400(api: ApiClient, alice: User, field: str) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", field: "2026-03-01"})
    assert answer.status == 400 and list(answer.json["errors"]) == [field]


async def test_errors_name_each_field_as_the_client_spelled_it(api: ApiClient, alice: User) -> None:
    answer = await api.post(
        alice.tasks, token=alice.token, json={"title": "", "dueDate": "soon", "remind_at": "later"}
    )
    assert answer.status == 400
    assert set(answer.json["errors"]) == {"title", "dueDate", "remind_at"}
    assert "dueDate: must be a date-time" in answer.json["detail"]


def test_every_body_the_service_loads_is_a_request_body() -> None:
    loaded = [value for value in vars(schemas).values() if isinstance(value, schemas.Schema)]
    bodies = [value for value in loaded if not isinstance(value, schemas.QueryString)]
    assert bodies and all(isinstance(body, RequestBody) for body in bodies)


def test_a_new_body_schema_gets_camel_case_for_free() -> None:
    class Refresh(RequestBody):
        refresh_token = fields.String(required=True)
        device_name_2 = fields.String()

    assert Refresh().load({"refreshToken": "r", "deviceName2": "phone"}) == {
        "refresh_token": "r",
        "device_name_2": "phone",
    }
    with pytest.raises(ValidationError) as refused:
        Refresh().load({"refreshToken": "r", "refresh_token": "r"})
    assert refused.value.messages == {"refreshToken": ["Also given as refresh_token; give one of the two."]}
    with pytest.raises(ValidationError) as missing:
        Refresh().load({"refreshtoken": "r"})
    assert set(missing.value.messages) == {"refresh_token", "refreshtoken"}
