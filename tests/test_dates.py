"""Dates as people write them and time zones: each user's zone, due dates with an offset,
without one and as plain dates (all-day tasks), DST gaps and folds, zone changes, and repeats
that keep their wall-clock time in the user's zone."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from service.schemas import TIME_ZONES
from tests.conftest import PASSWORD, ApiClient, User

REGISTRATION = {"email": "tz@example.com", "password": "analytical engine", "name": "Ada"}


async def set_zone(api: ApiClient, user: User, zone: str) -> dict:
    answer = await api.patch("/api/auth/me", token=user.token, json={"time_zone": zone})
    assert answer.status == 200, answer.json
    return answer.json


async def create(api: ApiClient, user: User, **fields: Any) -> dict:
    answer = await api.post(user.tasks, token=user.token, json={"title": "t", **fields})
    assert answer.status == 201, answer.json
    return answer.json


async def titles(api: ApiClient, user: User, query: str) -> list[str]:
    answer = await api.get(f"{user.tasks}?{query.replace('+', '%2B')}", token=user.token)
    assert answer.status == 200, answer.json
    return [task["title"] for task in answer.json]


def utc(text: str) -> str:
    """The answer's spelling of an instant: UTC with Z."""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A time zone per user


async def test_a_user_is_in_utc_unless_they_say_otherwise(api: ApiClient) -> None:
    grant = (await api.post("/api/auth/register", json=REGISTRATION)).json
    assert grant["user"]["time_zone"] == "UTC"


async def test_register_login_and_me_show_the_zone_given_at_register(api: ApiClient) -> None:
    grant = await api.post("/api/auth/register", json={**REGISTRATION, "time_zone": "Europe/Berlin"})
    assert grant.status == 201 and grant.json["user"]["time_zone"] == "Europe/Berlin"
    login = await api.post(
        "/api/auth/login", json={"email": REGISTRATION["email"], "password": REGISTRATION["password"]}
    )
    assert login.json["user"]["time_zone"] == "Europe/Berlin"
    me = await api.get("/api/auth/me", token=grant.json["access_token"])
    assert me.json == grant.json["user"]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "europe/berlin", "localtime", "+02:00", "CEST", "", 7])
async def test_an_unknown_zone_is_a_400_naming_the_field(api: ApiClient, alice: User, zone: object) -> None:
    registered = await api.post("/api/auth/register", json={**REGISTRATION, "time_zone": zone})
    changed = await api.patch("/api/auth/me", token=alice.token, json={"time_zone": zone})
    for answer in (registered, changed):
        assert answer.status == 400 and list(answer.json["errors"]) == ["time_zone"]


async def test_patch_me_changes_the_name_or_the_zone(api: ApiClient, alice: User) -> None:
    renamed = await api.patch("/api/auth/me", token=alice.token, json={"name": "Alice B."})
    assert renamed.status == 200
    assert (renamed.json["name"], renamed.json["time_zone"]) == ("Alice B.", "UTC")
    moved = await set_zone(api, alice, "Asia/Kolkata")
    assert (moved["name"], moved["time_zone"]) == ("Alice B.", "Asia/Kolkata")
    assert (await api.get("/api/auth/me", token=alice.token)).json == moved
    login = await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert login.json["user"] == moved


@pytest.mark.parametrize("body", [{}, {"name": " "}, {"name": None}, {"time_zone": None}, {"email": "x@y.z"}])
async def test_patch_me_refuses_empty_or_bad_bodies(api: ApiClient, alice: User, body: dict) -> None:
    answer = await api.patch("/api/auth/me", token=alice.token, json=body)
    assert answer.status == 400 and answer.json["errors"]


async def test_patch_me_needs_a_live_token(api: ApiClient, alice: User, db) -> None:
    assert (await api.patch("/api/auth/me", json={"name": "x"})).status == 401
    await db.execute("DELETE FROM users WHERE id = $1", alice.id)
    assert (await api.patch("/api/auth/me", token=alice.token, json={"name": "x"})).status == 401


async def test_a_zone_the_database_does_not_know_is_a_400(
    api: ApiClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when the service's IANA list (tzdata) is newer than PostgreSQL's own time zone data.
    monkeypatch.setattr("service.schemas.TIME_ZONES", TIME_ZONES | {"Mars/Olympus_Mons"})
    changed = await api.patch("/api/auth/me", token=alice.token, json={"time_zone": "Mars/Olympus_Mons"})
    assert (await api.get("/api/auth/me", token=alice.token)).json["time_zone"] == "UTC"
    # Last: outside a transaction of its own, the refused INSERT ends the test's transaction.
    registered = await api.post("/api/auth/register", json={**REGISTRATION, "time_zone": "Mars/Olympus_Mons"})
    for answer in (registered, changed):
        assert answer.status == 400 and list(answer.json["errors"]) == ["time_zone"]


def test_every_zone_accepted_is_one_postgresql_knows(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        known = {row[0] for row in conn.execute("SELECT name FROM pg_timezone_names")}
    assert known | {"UTC"} >= TIME_ZONES


# Due dates as written


@pytest.mark.parametrize(
    ("zone", "written", "due"),
    [
        ("UTC", "2026-01-15T09:00:00", "2026-01-15T09:00:00Z"),
        ("Europe/Berlin", "2026-01-15T09:00:00", "2026-01-15T08:00:00Z"),  # CET, +01:00
        ("Europe/Berlin", "2026-07-15T09:00:00", "2026-07-15T07:00:00Z"),  # CEST, +02:00
        ("Europe/Berlin", "2026-07-15T09:00", "2026-07-15T07:00:00Z"),  # an HTML datetime-local
        ("Asia/Kolkata", "2026-07-15T09:00:00", "2026-07-15T03:30:00Z"),
        ("Australia/Eucla", "2026-07-15T09:00:00", "2026-07-15T00:15:00Z"),
        ("America/New_York", "2025-12-31T23:59:59", "2026-01-01T04:59:59Z"),
        # With an offset, as before, whatever the user's zone.
        ("Europe/Berlin", "2026-07-15T09:00:00-05:00", "2026-07-15T14:00:00Z"),
        ("Asia/Kolkata", "2026-07-15T09:00:00Z", "2026-07-15T09:00:00Z"),
    ],
)
async def test_a_date_time_without_an_offset_is_in_the_users_zone(
    api: ApiClient, alice: User, zone: str, written: str, due: str
) -> None:
    await set_zone(api, alice, zone)
    task = await create(api, alice, due_date=written, remind_at=written)
    assert (task["due_date"], task["remind_at"]) == (due, due)
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task


@pytest.mark.parametrize(
    ("written", "due"),
    [
        # The clocks skip 02:00-03:00: read with the offset before (+01:00), so 03:30 CEST.
        ("2026-03-29T02:30:00", "2026-03-29T01:30:00Z"),
        ("2026-03-29T01:59:59", "2026-03-29T00:59:59Z"),
        ("2026-03-29T03:00:00", "2026-03-29T01:00:00Z"),
        # 02:00-03:00 happens twice: the later, in standard time (+01:00).
        ("2026-10-25T02:30:00", "2026-10-25T01:30:00Z"),
        ("2026-10-25T01:59:59", "2026-10-24T23:59:59Z"),
        ("2026-10-25T03:00:00", "2026-10-25T02:00:00Z"),
    ],
)
async def test_dst_gaps_move_forward_and_folds_take_the_later(
    api: ApiClient, alice: User, written: str, due: str
) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    assert (await create(api, alice, due_date=written))["due_date"] == due


async def test_a_plain_date_is_an_all_day_task_answered_as_written(api: ApiClient, alice: User) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    task = await create(api, alice, due_date="2026-03-01")
    assert task["due_date"] == "2026-03-01"
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json["due_date"] == "2026-03-01"
    listed = (await api.get(alice.tasks, token=alice.token)).json
    assert [item["due_date"] for item in listed] == ["2026-03-01"]


async def test_put_switches_between_all_day_timed_and_none(api: ApiClient, alice: User) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    url = f"{alice.tasks}/{(await create(api, alice))['id']}"
    for written, answered in [
        ("2026-03-01", "2026-03-01"),
        ("2026-03-01T09:00:00", "2026-03-01T08:00:00Z"),
        ("2026-03-02", "2026-03-02"),
        ("2026-03-01T09:00:00+00:00", "2026-03-01T09:00:00Z"),
        (None, None),
    ]:
        answer = await api.put(url, token=alice.token, json={"due_date": written})
        assert answer.status == 200 and answer.json["due_date"] == answered
    kept = await api.put(url, token=alice.token, json={"due_date": "2026-05-05"})
    renamed = await api.put(url, token=alice.token, json={"title": "renamed"})
    assert renamed.json["due_date"] == kept.json["due_date"] == "2026-05-05"


async def test_an_all_day_task_is_due_when_its_day_ends_in_the_users_zone(
    api: ApiClient, alice: User
) -> None:
    await set_zone(api, alice, "Europe/Berlin")  # 2026-03-01 ends at 2026-03-01T23:00:00Z
    await create(api, alice, title="all day", due_date="2026-03-01")
    await create(api, alice, title="at 22:30Z", due_date="2026-03-01T22:30:00Z")
    await create(api, alice, title="at 23:30Z", due_date="2026-03-01T23:30:00Z")
    await create(api, alice, title="next day", due_date="2026-03-02")
    assert await titles(api, alice, "sort=due_date") == ["at 22:30Z", "all day", "at 23:30Z", "next day"]
    assert await titles(api, alice, "sort=due_date&order=desc") == [
        "next day",
        "at 23:30Z",
        "all day",
        "at 22:30Z",
    ]
    assert "all day" in await titles(api, alice, "due_before=2026-03-01T23:00:01Z")
    assert "all day" not in await titles(api, alice, "due_before=2026-03-01T23:00:00Z")
    assert "all day" in await titles(api, alice, "due_after=2026-03-01T22:59:59Z")
    assert "all day" not in await titles(api, alice, "due_after=2026-03-01T23:00:00Z")


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "UTC", "Pacific/Pago_Pago"])  # +14, 0, -11
async def test_an_all_day_task_is_overdue_only_once_its_day_is_over_there(
    api: ApiClient, alice: User, zone: str
) -> None:
    await set_zone(api, alice, zone)
    now = datetime.now(ZoneInfo(zone))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(zone))
    if midnight - now < timedelta(seconds=5):  # the day ends during the test: let it end first
        await asyncio.sleep((midnight - now).total_seconds() + 1)
        now = datetime.now(ZoneInfo(zone))
    today = now.date()
    for title, day in [
        ("yesterday", today - timedelta(days=1)),
        ("today", today),
        ("tomorrow", today + timedelta(days=1)),
    ]:
        await create(api, alice, title=title, due_date=day.isoformat())
    assert await titles(api, alice, "overdue=true") == ["yesterday"]
    assert sorted(await titles(api, alice, "overdue=false")) == ["today", "tomorrow"]


async def test_a_new_zone_moves_no_timed_task_and_all_day_tasks_keep_their_dates(
    api: ApiClient, alice: User
) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    timed = await create(
        api, alice, title="timed", due_date="2026-03-01T09:00:00", remind_at="2026-03-01T08:00:00"
    )
    all_day = await create(
        api, alice, title="all day", due_date="2026-03-01", remind_at="2026-03-01T08:00:00"
    )
    assert await titles(api, alice, "due_before=2026-03-01T23:00:01Z&q=all") == ["all day"]
    await set_zone(api, alice, "America/New_York")  # 2026-03-01 now ends at 2026-03-02T05:00:00Z
    for task in (timed, all_day):
        assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task
    assert await titles(api, alice, "due_before=2026-03-01T23:00:01Z&q=all") == []
    assert await titles(api, alice, "due_before=2026-03-02T05:00:01Z&q=all") == ["all day"]
    assert await titles(api, alice, "due_after=2026-03-02T04:59:59Z") == ["all day"]
    # Dates written from now on are in the new zone.
    assert (await create(api, alice, due_date="2026-03-01T09:00:00"))["due_date"] == "2026-03-01T14:00:00Z"


async def test_a_name_change_leaves_all_day_tasks_alone(api: ApiClient, alice: User, db) -> None:
    await set_zone(api, alice, "Asia/Kolkata")
    task = await create(api, alice, due_date="2026-03-01")
    stored = await db.fetchval("SELECT due_date FROM tasks WHERE id = $1", task["id"])
    await api.patch("/api/auth/me", token=alice.token, json={"name": "New name"})
    assert await db.fetchval("SELECT due_date FROM tasks WHERE id = $1", task["id"]) == stored
    assert stored == datetime(2026, 3, 1, 18, 30, tzinfo=UTC)  # midnight in Kolkata


@pytest.mark.parametrize(
    "written", ["1899-12-31", "9000-01-01", "1899-12-31T23:00:00", "9000-01-01T00:00:00"]
)
async def test_years_outside_1900_to_8999_are_400_in_every_form(
    api: ApiClient, alice: User, written: str
) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", "due_date": written})
    assert answer.status == 400 and list(answer.json["errors"]) == ["due_date"]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
async def test_the_ends_of_the_range_work_in_far_zones(api: ApiClient, alice: User, zone: str) -> None:
    await set_zone(api, alice, zone)
    for written in ("1900-01-01", "8999-12-31", "1900-01-01T00:00:00", "8999-12-31T23:59:59"):
        task = await create(api, alice, due_date=written, recurrence={"every": "year"})
        assert (await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)).status == 200
    assert (await api.get(f"{alice.tasks}?sort=due_date", token=alice.token)).status == 200


# Repeats in the user's zone


async def follow(api: ApiClient, user: User, task: dict, steps: int) -> list[dict]:
    """The task and the next `steps` occurrences, made by completing each in turn."""
    chain = [task]
    for _ in range(steps):
        done = await api.patch(f"{user.tasks}/{chain[-1]['id']}/complete", token=user.token)
        assert done.status == 200 and done.json["next_task_id"], done.json
        chain.append((await api.get(f"{user.tasks}/{done.json['next_task_id']}", token=user.token)).json)
    return chain


def wall_clock(zone: str, *days: date, at: str) -> list[str]:
    """`at` o'clock on each day in `zone`, as the answers spell it (zoneinfo, not PostgreSQL)."""
    hour, minute = map(int, at.split(":"))
    return [
        utc(datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone)).isoformat())
        for day in days
    ]


def days(first: str, count: int, step: int = 1) -> list[date]:
    return [date.fromisoformat(first) + timedelta(days=n * step) for n in range(count)]


@pytest.mark.parametrize(
    ("zone", "first"),
    [
        ("Europe/Berlin", "2026-03-27"),  # CET -> CEST on Sunday 29 March
        ("Europe/Berlin", "2026-10-23"),  # CEST -> CET on Sunday 25 October
        ("America/New_York", "2026-03-06"),  # EST -> EDT on 8 March
        ("Australia/Lord_Howe", "2026-04-03"),  # +11 -> +10:30 on 5 April: a 30-minute change
        ("Australia/Lord_Howe", "2026-10-02"),  # +10:30 -> +11 on 4 October
        ("Australia/Eucla", "2007-10-26"),  # +08:45 -> +09:45 on 28 October 2007, when it had DST
        ("Australia/Eucla", "2008-03-28"),  # +09:45 -> +08:45 on 30 March 2008
        ("Asia/Kolkata", "2026-03-27"),  # +05:30, no DST
    ],
)
async def test_a_daily_task_stays_at_its_wall_clock_time_across_dst(
    api: ApiClient, alice: User, zone: str, first: str
) -> None:
    await set_zone(api, alice, zone)
    task = await create(
        api, alice, due_date=f"{first}T09:00:00", remind_at=f"{first}T08:15:00", recurrence={"every": "day"}
    )
    chain = await follow(api, alice, task, 4)
    assert [item["due_date"] for item in chain] == wall_clock(zone, *days(first, 5), at="09:00")
    assert [item["remind_at"] for item in chain] == wall_clock(zone, *days(first, 5), at="08:15")


async def test_berlin_at_nine_in_utc_terms(api: ApiClient, alice: User) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    task = await create(api, alice, due_date="2026-03-28T09:00:00", recurrence={"every": "day"})
    assert [item["due_date"] for item in await follow(api, alice, task, 2)] == [
        "2026-03-28T08:00:00Z",
        "2026-03-29T07:00:00Z",
        "2026-03-30T07:00:00Z",
    ]
    autumn = await create(api, alice, due_date="2026-10-24T09:00:00+02:00", recurrence={"every": "week"})
    assert [item["due_date"] for item in await follow(api, alice, autumn, 1)] == [
        "2026-10-24T07:00:00Z",
        "2026-10-31T08:00:00Z",
    ]


@pytest.mark.parametrize(
    ("zone", "due", "expected"),
    [
        # Month ends clamp as ever, at the same wall-clock time.
        ("Europe/Berlin", "2026-01-31T09:00", ["01-31T08:00", "02-28T08:00", "03-28T08:00", "04-28T07:00"]),
        ("Europe/Berlin", "2026-03-31T23:30", ["03-31T21:30", "04-30T21:30", "05-30T21:30", "06-30T21:30"]),
        ("Asia/Kolkata", "2028-01-31T00:10:00", ["01-30T18:40", "02-28T18:40", "03-28T18:40", "04-28T18:40"]),
    ],
)  # fmt: skip
async def test_monthly_repeats_clamp_in_the_users_zone(
    api: ApiClient, alice: User, zone: str, due: str, expected: list[str]
) -> None:
    await set_zone(api, alice, zone)
    task = await create(api, alice, due_date=due, recurrence={"every": "month"})
    year = due[:4]
    assert [item["due_date"] for item in await follow(api, alice, task, 3)] == [
        f"{year}-{month_day}:00Z" for month_day in expected
    ]


async def test_a_repeat_that_lands_in_a_dst_gap_moves_forward(api: ApiClient, alice: User) -> None:
    await set_zone(api, alice, "Europe/Berlin")
    task = await create(api, alice, due_date="2026-03-28T02:30:00", recurrence={"every": "day"})
    chain = await follow(api, alice, task, 1)
    assert [item["due_date"] for item in chain] == [
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:30:00Z",
    ]  # 03:30 CEST


@pytest.mark.parametrize(
    ("zone", "rule", "first", "expected"),
    [
        ("Europe/Berlin", {"every": "day"}, "2026-03-28", ["2026-03-28", "2026-03-29", "2026-03-30"]),
        ("Europe/Berlin", {"every": "month"}, "2026-01-31", ["2026-01-31", "2026-02-28", "2026-03-28"]),
        ("Australia/Lord_Howe", {"every": "week", "interval": 2}, "2026-03-29",
         ["2026-03-29", "2026-04-12", "2026-04-26"]),
        ("Pacific/Kiritimati", {"every": "year"}, "2028-02-29", ["2028-02-29", "2029-02-28", "2030-02-28"]),
    ],
)  # fmt: skip
async def test_an_all_day_task_repeats_by_date(
    api: ApiClient, alice: User, db, zone: str, rule: dict, first: str, expected: list[str]
) -> None:
    await set_zone(api, alice, zone)
    task = await create(api, alice, due_date=first, recurrence=rule)
    chain = await follow(api, alice, task, 2)
    assert [item["due_date"] for item in chain] == expected
    for item in chain:  # each due when its own day ends there
        stored = await db.fetchval("SELECT due_date FROM tasks WHERE id = $1", item["id"])
        day = date.fromisoformat(item["due_date"]) + timedelta(days=1)
        assert stored == datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))


async def test_an_all_day_task_after_a_zone_change_repeats_in_the_new_zone(
    api: ApiClient, alice: User, db
) -> None:
    await set_zone(api, alice, "Asia/Kolkata")
    task = await create(api, alice, due_date="2026-06-01", recurrence={"every": "day"})
    await set_zone(api, alice, "America/Los_Angeles")
    following = (await follow(api, alice, task, 1))[1]
    assert following["due_date"] == "2026-06-02"
    stored = await db.fetchval("SELECT due_date FROM tasks WHERE id = $1", following["id"])
    assert stored == datetime(2026, 6, 3, 7, tzinfo=UTC)  # midnight in Los Angeles (PDT)


async def test_a_repeating_task_without_a_due_date_steps_from_now_in_the_zone(
    api: ApiClient, alice: User
) -> None:
    await set_zone(api, alice, "Pacific/Chatham")  # +12:45 or +13:45
    task = await create(api, alice, recurrence={"every": "day"})
    done = (await api.patch(f"{alice.tasks}/{task['id']}/complete", token=alice.token)).json
    following = (await api.get(f"{alice.tasks}/{done['next_task_id']}", token=alice.token)).json
    completed = datetime.fromisoformat(done["completed_at"]).astimezone(ZoneInfo("Pacific/Chatham"))
    expected = (completed.replace(tzinfo=None) + timedelta(days=1)).replace(
        tzinfo=ZoneInfo("Pacific/Chatham")
    )
    assert abs(datetime.fromisoformat(following["due_date"]) - expected) < timedelta(seconds=5)
