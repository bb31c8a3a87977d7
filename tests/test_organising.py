"""Organising fields: priority, tags, due date, reminder, repeat rules, completion time."""

from datetime import datetime, timedelta

import pytest

from tests.conftest import ApiClient, User


async def create(api: ApiClient, user: User, **fields: object) -> dict:
    answer = await api.post(user.tasks, token=user.token, json={"title": "Water plants", **fields})
    assert answer.status == 201, answer.json
    return answer.json


async def test_new_fields_default_sensibly(api: ApiClient, alice: User) -> None:
    task = await create(api, alice)
    assert task["priority"] == "medium"
    assert task["tags"] == []
    assert task["due_date"] is None and task["remind_at"] is None and task["recurrence"] is None
    assert task["completed_at"] is None and task["next_task_id"] is None


async def test_every_field_round_trips_and_dates_come_back_in_utc(api: ApiClient, alice: User) -> None:
    task = await create(
        api,
        alice,
        priority="high",
        tags=["Home", "garden"],
        due_date="2026-03-01T09:30:00+02:00",
        remind_at="2026-03-01T06:00:00.250Z",
        recurrence={"every": "week", "interval": 2},
    )
    assert task["priority"] == "high"
    assert task["tags"] == ["garden", "Home"]
    assert task["due_date"] == "2026-03-01T07:30:00Z"
    assert task["remind_at"] == "2026-03-01T06:00:00.250000Z"
    assert task["recurrence"] == {"every": "week", "interval": 2}
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task


async def test_tags_are_trimmed_unique_regardless_of_case_and_sorted(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, tags=["  Work ", "urgent", "work", "WORK", "Álgebra", "b"])
    assert task["tags"] == ["b", "urgent", "Work", "Álgebra"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": 2}, "priority"),
        ({"tags": "home"}, "tags"),
        ({"tags": ["   "]}, "tags"),
        ({"tags": ["x" * 51]}, "tags"),
        ({"tags": [f"t{n}" for n in range(21)]}, "tags"),
        ({"tags": [1]}, "tags"),
        ({"tags": ["a\x00b"]}, "tags"),
        ({"due_date": "2026-03-01T25:00:00"}, "due_date"),
        ({"due_date": "2026-02-30"}, "due_date"),
        ({"due_date": "tomorrow"}, "due_date"),
        ({"remind_at": "2026-03-01"}, "remind_at"),  # a reminder needs a time
        ({"due_date": 1767225600}, "due_date"),
        ({"remind_at": "2026-13-01T00:00:00Z"}, "remind_at"),
        ({"recurrence": {"every": "fortnight"}}, "recurrence"),
        ({"recurrence": {"every": "day", "interval": 0}}, "recurrence"),
        ({"recurrence": {"every": "day", "interval": 366}}, "recurrence"),
        ({"recurrence": {"every": "day", "interval": "2"}}, "recurrence"),
        ({"recurrence": {"every": "day", "interval": True}}, "recurrence"),
        ({"recurrence": {"every": "day", "at": "9:00"}}, "recurrence"),
        ({"recurrence": "daily"}, "recurrence"),
    ],
)
async def test_bad_values_are_400_naming_the_field(
    api: ApiClient, alice: User, fields: dict, named: str
) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", **fields})
    assert answer.status == 400
    assert list(answer.json["errors"]) == [named]


async def test_twenty_tags_are_allowed(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, tags=[f"t{n:02}" for n in range(20)])
    assert len(task["tags"]) == 20


async def test_recurrence_interval_defaults_to_one(api: ApiClient, alice: User) -> None:
    assert (await create(api, alice, recurrence={"every": "day"}))["recurrence"] == {
        "every": "day",
        "interval": 1,
    }


async def test_put_adds_removes_and_replaces_tags_and_clears_dates(api: ApiClient, alice: User) -> None:
    task = await create(
        api, alice, tags=["a", "b"], due_date="2026-05-01T00:00:00Z", recurrence={"every": "day"}
    )
    url = f"{alice.tasks}/{task['id']}"
    added = await api.put(url, token=alice.token, json={"tags": [*task["tags"], "c"]})
    assert added.json["tags"] == ["a", "b", "c"]
    removed = await api.put(url, token=alice.token, json={"tags": ["a", "c"]})
    assert removed.json["tags"] == ["a", "c"]
    cleared = await api.put(url, token=alice.token, json={"tags": [], "due_date": None, "recurrence": None})
    assert (
        cleared.json["tags"] == [] and cleared.json["due_date"] is None and cleared.json["recurrence"] is None
    )
    assert cleared.json["title"] == task["title"] and cleared.json["priority"] == "medium"


async def test_put_with_only_the_original_fields_keeps_the_new_ones(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, priority="low", tags=["x"], due_date="2026-05-01T00:00:00Z")
    answer = await api.put(
        f"{alice.tasks}/{task['id']}", token=alice.token, json={"title": "n", "description": "d"}
    )
    assert {key: answer.json[key] for key in ("priority", "tags", "due_date")} == {
        "priority": "low",
        "tags": ["x"],
        "due_date": task["due_date"],
    }


async def test_completed_at_is_set_kept_and_cleared(api: ApiClient, alice: User) -> None:
    task = await create(api, alice)
    url = f"{alice.tasks}/{task['id']}/complete"
    done = (await api.patch(url, token=alice.token, json={"completed": True})).json
    assert done["completed_at"] is not None
    again = (await api.patch(url, token=alice.token, json={"completed": True})).json
    assert again["completed_at"] == done["completed_at"]  # already done: still done since then
    reopened = (
        await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"completed": False})
    ).json
    assert reopened["completed_at"] is None
    assert (await create(api, alice, completed=True))["completed_at"] is not None


@pytest.mark.parametrize(
    ("rule", "due", "next_due"),
    [
        ({"every": "day"}, "2026-03-01T09:00:00Z", "2026-03-02T09:00:00Z"),
        ({"every": "day", "interval": 3}, "2026-12-30T09:00:00Z", "2027-01-02T09:00:00Z"),
        ({"every": "week", "interval": 2}, "2026-03-01T09:00:00Z", "2026-03-15T09:00:00Z"),
        ({"every": "month"}, "2026-01-31T09:00:00Z", "2026-02-28T09:00:00Z"),
        ({"every": "month"}, "2028-01-31T09:00:00Z", "2028-02-29T09:00:00Z"),  # leap year
        ({"every": "month"}, "2026-03-31T23:30:00Z", "2026-04-30T23:30:00Z"),
        ({"every": "month", "interval": 12}, "2026-05-15T00:00:00Z", "2027-05-15T00:00:00Z"),
        ({"every": "year"}, "2028-02-29T12:00:00Z", "2029-02-28T12:00:00Z"),
        ({"every": "year", "interval": 4}, "2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"),
    ],
)
async def test_completing_a_repeating_task_schedules_the_next(
    api: ApiClient, alice: User, rule: dict, due: str, next_due: str
) -> None:
    task = await create(api, alice, tags=["chores"], priority="high", due_date=due, recurrence=rule)
    answer = await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)
    done = answer.json
    assert done["completed"] is True and done["next_task_id"] is not None
    following = (await api.get(f"{alice.tasks}/{done['next_task_id']}", token=alice.token)).json
    assert following["due_date"] == next_due
    assert following["completed"] is False and following["completed_at"] is None
    assert following["next_task_id"] is None
    for field in ("title", "description", "priority", "tags", "recurrence"):
        assert following[field] == task[field]


async def test_the_reminder_moves_with_the_rule(api: ApiClient, alice: User) -> None:
    task = await create(
        api,
        alice,
        due_date="2026-01-31T09:00:00Z",
        remind_at="2026-01-30T18:00:00Z",
        recurrence={"every": "month"},
    )
    done = (await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"completed": True})).json
    following = (await api.get(f"{alice.tasks}/{done['next_task_id']}", token=alice.token)).json
    assert following["due_date"] == "2026-02-28T09:00:00Z"
    assert following["remind_at"] == "2026-02-28T18:00:00Z"  # Jan 30 + 1 month


async def test_a_repeating_task_without_a_due_date_is_due_one_step_after_completion(
    api: ApiClient, alice: User
) -> None:
    task = await create(api, alice, recurrence={"every": "week"})
    done = (await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)).json
    following = (await api.get(f"{alice.tasks}/{done['next_task_id']}", token=alice.token)).json
    completed_at = datetime.fromisoformat(done["completed_at"])
    assert datetime.fromisoformat(following["due_date"]) - completed_at < timedelta(days=7, seconds=5)
    assert datetime.fromisoformat(following["due_date"]) - completed_at > timedelta(days=7, seconds=-5)


async def test_a_task_continues_its_series_only_once(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, due_date="2026-03-01T09:00:00Z", recurrence={"every": "day"})
    url = f"{alice.tasks}/{task['id']}/complete"
    first = (await api.patch(url, token=alice.token)).json
    reopened = (await api.patch(url, token=alice.token)).json
    again = (await api.patch(url, token=alice.token)).json
    assert reopened["completed"] is False
    assert first["next_task_id"] == reopened["next_task_id"] == again["next_task_id"]
    assert len((await api.get(alice.tasks, token=alice.token)).json) == 2


async def test_completing_a_plain_task_creates_nothing(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, due_date="2026-03-01T09:00:00Z")
    done = (await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)).json
    assert done["next_task_id"] is None
    assert len((await api.get(alice.tasks, token=alice.token)).json) == 1


# Found by the contract fuzzer (tests/test_fuzz.py): each once answered 500 or broke a listing.


@pytest.mark.parametrize(
    "due",
    [
        "0001-01-01T00:00:00Z",  # stored as -infinity, and every later listing failed
        "9999-12-31T23:59:59.999999Z",  # stored as infinity
        "9999-12-31T23:30:00-01:00",  # past the year 9999 in UTC
        "1899-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
    ],
)
async def test_dates_outside_the_years_1900_to_8999_are_400(api: ApiClient, alice: User, due: str) -> None:
    answer = await api.post(
        alice.tasks, token=alice.token, json={"title": "t", "due_date": due, "remind_at": due}
    )
    assert answer.status == 400 and set(answer.json["errors"]) == {"due_date", "remind_at"}
    filtered = await api.get(f"{alice.tasks}?due_after={due.replace('+', '%2B')}", token=alice.token)
    assert filtered.status == 400 and list(filtered.json["errors"]) == ["due_after"]
    assert (await api.get(alice.tasks, token=alice.token)).status == 200


@pytest.mark.parametrize("due", ["1900-01-01T00:00:00+01:00", "8999-12-31T23:59:59-12:00"])
async def test_the_years_1900_and_8999_are_allowed(api: ApiClient, alice: User, due: str) -> None:
    task = await create(api, alice, due_date=due)
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task


async def test_a_series_ends_before_the_year_9000(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, due_date="8999-06-01T00:00:00Z", recurrence={"every": "year"})
    done = (await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)).json
    assert done["completed"] is True and done["next_task_id"] is None
    assert len((await api.get(alice.tasks, token=alice.token)).json) == 1


async def test_blank_means_json_schemas_whitespace(api: ApiClient, alice: User) -> None:
    assert (await api.post(alice.tasks, token=alice.token, json={"title": "\ufeff\u3000"})).status == 400
    assert (await api.post(alice.tasks, token=alice.token, json={"title": "\u001e"})).status == 201


@pytest.mark.parametrize("tag", ["", "   ", "\ufeff", "x" * 51, " " + "x" * 50])
async def test_tags_are_checked_as_given(api: ApiClient, alice: User, tag: str) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", "tags": [tag]})
    assert answer.status == 400 and list(answer.json["errors"]) == ["tags"]


async def test_a_whole_float_is_an_integer(api: ApiClient, alice: User) -> None:
    task = await create(api, alice, recurrence={"every": "day", "interval": 2.0})
    assert task["recurrence"] == {"every": "day", "interval": 2}
    bad = await api.post(
        alice.tasks, token=alice.token, json={"title": "t", "recurrence": {"every": "day", "interval": 2.5}}
    )
    assert bad.status == 400
