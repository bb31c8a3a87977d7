"""The original six task routes: shapes, status codes, validation and per-user isolation."""

import re
from datetime import datetime

import pytest

from tests.conftest import ApiClient, User

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def create(api: ApiClient, user: User, **fields: object) -> dict:
    answer = await api.post(user.tasks, token=user.token, json={"title": "Buy milk", **fields})
    assert answer.status == 201, answer.json
    return answer.json


async def test_create_returns_the_task_and_its_location(api: ApiClient, alice: User) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "Buy milk", "description": "2 l"})
    assert answer.status == 201
    task = answer.json
    assert task["title"] == "Buy milk"
    assert task["description"] == "2 l"
    assert task["completed"] is False
    assert task["user_id"] == alice.id
    assert RFC3339_UTC.fullmatch(task["created_at"]) and RFC3339_UTC.fullmatch(task["updated_at"])
    assert answer.headers["Location"] == f"{alice.tasks}/{task['id']}"
    fetched = await api.get(answer.headers["Location"], token=alice.token)
    assert fetched.json == task


async def test_create_with_only_a_title_defaults_the_rest(api: ApiClient, alice: User) -> None:
    task = await create(api, alice)
    assert task["description"] is None
    assert task["completed"] is False


async def test_create_may_set_completed(api: ApiClient, alice: User) -> None:
    assert (await create(api, alice, completed=True))["completed"] is True


async def test_list_returns_a_plain_array_newest_first(api: ApiClient, alice: User) -> None:
    assert (await api.get(alice.tasks, token=alice.token)).json == []
    first = await create(api, alice, title="first")
    second = await create(api, alice, title="second")
    answer = await api.get(alice.tasks, token=alice.token)
    assert answer.status == 200
    assert [task["id"] for task in answer.json] == [second["id"], first["id"]]


async def test_list_shows_only_the_callers_tasks(api: ApiClient, alice: User, bob: User) -> None:
    await create(api, alice)
    await create(api, bob)
    tasks = (await api.get(alice.tasks, token=alice.token)).json
    assert {task["user_id"] for task in tasks} == {alice.id}


@pytest.mark.parametrize(
    ("title", "ok"),
    [
        ("x", True),
        ("x" * 255, True),
        ("é" * 255, True),
        ("", False),
        ("x" * 256, False),
        ("   ", False),
        ("\t\n", False),
    ],
)
async def test_title_bounds(api: ApiClient, alice: User, title: str, ok: bool) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": title})
    assert answer.status == (201 if ok else 400)
    if not ok:
        assert list(answer.json["errors"]) == ["title"]


@pytest.mark.parametrize(("length", "ok"), [(0, True), (1000, True), (1001, False)])
async def test_description_bounds(api: ApiClient, alice: User, length: int, ok: bool) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", "description": "d" * length})
    assert answer.status == (201 if ok else 400)


@pytest.mark.parametrize("value", ["true", 1, 0, "false", None, [], {}])
async def test_completed_must_be_a_real_boolean(api: ApiClient, alice: User, value: object) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", "completed": value})
    assert answer.status == 400
    assert "completed" in answer.json["errors"]


async def test_every_failing_field_is_named(api: ApiClient, alice: User) -> None:
    answer = await api.post(
        alice.tasks,
        token=alice.token,
        json={"title": "", "description": 5, "completed": "yes", "colour": "red"},
    )
    assert answer.status == 400
    assert set(answer.json["errors"]) == {"title", "description", "completed", "colour"}
    assert "colour" in answer.json["detail"]


@pytest.mark.parametrize("body", [{}, {"description": "no title"}, {"title": None}, {"title": 7}])
async def test_create_needs_a_string_title(api: ApiClient, alice: User, body: dict) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json=body)
    assert answer.status == 400
    assert "title" in answer.json["errors"]


async def test_get_answers_404_for_a_missing_task(api: ApiClient, alice: User) -> None:
    answer = await api.get(f"{alice.tasks}/999999", token=alice.token)
    assert answer.status == 404
    assert answer.content_type == "application/problem+json"


async def test_someone_elses_task_is_not_found_on_every_route(api: ApiClient, alice: User, bob: User) -> None:
    task = await create(api, bob)
    url = f"{alice.tasks}/{task['id']}"
    missing = await api.get(f"{alice.tasks}/999999", token=alice.token)
    answers = [
        await api.get(url, token=alice.token),
        await api.put(url, token=alice.token, json={"title": "mine now"}),
        await api.patch(f"{url}/complete", token=alice.token),
        await api.delete(url, token=alice.token),
    ]
    assert [answer.status for answer in answers] == [404, 404, 404, 404]
    # Not even the wording tells "someone else's" apart from "missing".
    assert answers[0].json["detail"] == missing.json["detail"].replace("999999", str(task["id"]))
    unchanged = await api.get(f"{bob.tasks}/{task['id']}", token=bob.token)
    assert unchanged.json == task


async def test_another_users_url_is_forbidden(api: ApiClient, alice: User, bob: User) -> None:
    task = await create(api, bob)
    for answer in [
        await api.get(bob.tasks, token=alice.token),
        await api.post(bob.tasks, token=alice.token, json={"title": "x"}),
        await api.get(f"{bob.tasks}/{task['id']}", token=alice.token),
        await api.delete(f"{bob.tasks}/{task['id']}", token=alice.token),
    ]:
        assert answer.status == 403
    assert len((await api.get(bob.tasks, token=bob.token)).json) == 1


async def test_put_changes_only_given_fields_and_bumps_updated_at(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, description="keep me")
    answer = await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"title": "Buy oat milk"})
    assert answer.status == 200
    updated = answer.json
    assert updated["title"] == "Buy oat milk"
    assert updated["description"] == "keep me"
    assert updated["completed"] is False
    assert updated["created_at"] == task["created_at"]
    assert _time(updated["updated_at"]) > _time(task["updated_at"])


async def test_put_can_clear_the_description_and_complete(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, description="old")
    answer = await api.put(
        f"{alice.tasks}/{task['id']}", token=alice.token, json={"description": None, "completed": True}
    )
    assert answer.json["description"] is None
    assert answer.json["completed"] is True
    assert answer.json["title"] == task["title"]


@pytest.mark.parametrize("body", [{}, {"title": None}, {"title": " "}, {"completed": "true"}, {"id": 5}])
async def test_put_rejects_empty_or_invalid_bodies(api: ApiClient, alice: User, body: dict) -> None:
    task = await create(api, alice)
    answer = await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json=body)
    assert answer.status == 400
    assert answer.json["errors"]
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task


async def test_put_on_a_missing_task_is_404(api: ApiClient, alice: User) -> None:
    answer = await api.put(f"{alice.tasks}/424242", token=alice.token, json={"title": "x"})
    assert answer.status == 404


async def test_complete_without_a_body_toggles(api: ApiClient, alice: User) -> None:
    task = await create(api, alice)
    url = f"{alice.tasks}/{task['id']}/complete"
    first = await api.patch(url, token=alice.token)
    assert first.status == 200 and first.json["completed"] is True
    second = await api.patch(url, token=alice.token)
    assert second.json["completed"] is False
    assert _time(second.json["updated_at"]) > _time(first.json["updated_at"]) > _time(task["updated_at"])


@pytest.mark.parametrize("value", [True, False])
async def test_complete_with_a_body_sets_the_value(api: ApiClient, alice: User, value: bool) -> None:
    task = await create(api, alice, completed=not value)
    url = f"{alice.tasks}/{task['id']}/complete"
    for _ in range(2):  # setting is idempotent, unlike toggling
        answer = await api.patch(url, token=alice.token, json={"completed": value})
        assert answer.status == 200 and answer.json["completed"] is value


@pytest.mark.parametrize("body", [{"completed": "true"}, {"completed": 1}, {"done": True}])
async def test_complete_rejects_bad_bodies(api: ApiClient, alice: User, body: dict) -> None:
    task = await create(api, alice)
    answer = await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token, json=body)
    assert answer.status == 400
    assert answer.json["errors"]


async def test_delete_answers_204_then_the_task_is_gone(api: ApiClient, alice: User) -> None:
    task = await create(api, alice)
    url = f"{alice.tasks}/{task['id']}"
    answer = await api.delete(url, token=alice.token)
    assert answer.status == 204
    assert answer.body == b""
    assert (await api.get(url, token=alice.token)).status == 404
    assert (await api.delete(url, token=alice.token)).status == 404


@pytest.mark.parametrize("task_id", ["9223372036854775807", "9223372036854775808", "1" * 40, "7" * 5000])
async def test_ids_beyond_bigint_are_not_found(api: ApiClient, alice: User, task_id: str) -> None:
    for answer in [
        await api.get(f"{alice.tasks}/{task_id}", token=alice.token),
        await api.put(f"{alice.tasks}/{task_id}", token=alice.token, json={"title": "x"}),
        await api.delete(f"{alice.tasks}/{task_id}", token=alice.token),
    ]:
        assert answer.status == 404


@pytest.mark.parametrize("user_id", ["9" * 40, "9" * 5000, "0{id}"])
async def test_any_other_user_id_in_the_path_is_forbidden(api: ApiClient, alice: User, user_id: str) -> None:
    answer = await api.get(f"/api/{user_id.format(id=alice.id)}/tasks", token=alice.token)
    assert answer.status == 403


async def test_non_numeric_task_ids_are_unknown_urls(api: ApiClient, alice: User) -> None:
    assert (await api.get(f"{alice.tasks}/abc", token=alice.token)).status == 404


@pytest.mark.parametrize("user_id", ["abc", "ME", "me%2F", "auth"])
async def test_a_user_id_that_is_not_a_name_of_the_caller_is_forbidden(
    api: ApiClient, alice: User, user_id: str
) -> None:
    assert (await api.get(f"/api/{user_id}/tasks", token=alice.token)).status == 403


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
