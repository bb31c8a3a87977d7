"""Filling a database for load tests: users and their tasks through COPY, with the task counters
the quota and the change feed read, and a token per user. `python -m service seed` and
`make bench` (bench/seed.py) both seed with this.

Signing thousands of users up through the API would cost argon2 for each; inserting tasks one
request at a time, minutes. COPY takes seconds, and tokens minted with JWT_SECRET (like
`python -m service token`: no session) stand in for logins.
"""

import asyncio
import csv
import dataclasses
import os
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import argon2
import asyncpg

from service.auth import mint_token

# Seeded tasks start this long ago, one second apart, so "newest first" is a real order.
HISTORY = timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class SeededUser:
    """A seeded user and the ids of its tasks, which COPY numbers in a row: first to last."""

    user_id: int
    first_task_id: int | None  # None when it has no tasks
    last_task_id: int | None
    tasks: int


def _task_rows(user_ids: Sequence[int], tasks_each: int, start: datetime) -> Iterator[tuple[object, ...]]:
    """Rows in id order: each user's tasks together, each one a second newer than the last;
    every third one completed, every fourth without a description."""
    moment = start
    for user_id in user_ids:
        for number in range(1, tasks_each + 1):
            moment += timedelta(seconds=1)
            completed = number % 3 == 0
            description = (
                None
                if number % 4 == 0
                else f"Seeded task {number} of user {user_id}: a description of an ordinary length."
            )
            yield (
                user_id, f"Task {number}: check the weekly report", description, completed,
                moment if completed else None, moment, moment,
            )  # fmt: skip


async def _seed(
    conn: asyncpg.Connection, groups: Sequence[tuple[int, int]], password_hash: str
) -> list[list[SeededUser]]:
    label = secrets.token_hex(4)  # emails are unique: seeding twice adds users, it never collides
    emails = [f"seed-{label}-{n}@example.com" for n in range(sum(users for users, _ in groups))]
    async with conn.transaction():
        await conn.copy_records_to_table(
            "users",
            columns=["email", "name", "password_hash"],
            records=((email, "Seeded user", password_hash) for email in emails),
        )
        found = await conn.fetch(
            "SELECT email, id FROM users WHERE email_key(email) = ANY ($1::text[])", emails
        )
        ids = dict(found)
        user_ids = [ids[email] for email in emails]
        start = datetime.now(UTC) - HISTORY
        grouped, offset = [], 0
        for users, tasks_each in groups:
            group = user_ids[offset : offset + users]
            offset += users
            grouped.append(group)
            if tasks_each:
                await conn.copy_records_to_table(
                    "tasks",
                    columns=[
                        "user_id", "title", "description", "completed", "completed_at", "created_at",
                        "updated_at",
                    ],
                    records=_task_rows(group, tasks_each, start),
                )  # fmt: skip
                start += timedelta(seconds=users * tasks_each)
        # What a create would have counted (migrations/0009): the quota is checked against it,
        # and a user's first write would otherwise start counting at zero. No change is logged:
        # the feed's first answer, without `since`, lists every live task anyway.
        counted = await conn.fetch(
            """
            WITH counted AS (
                SELECT user_id, min(id) AS first, max(id) AS last, count(*)::int AS tasks
                FROM tasks WHERE user_id = ANY ($1::bigint[]) GROUP BY user_id
            ), stored AS (
                INSERT INTO task_counters (user_id, tasks) SELECT user_id, tasks FROM counted
            )
            SELECT * FROM counted
            """,
            user_ids,
        )
    by_user = {row["user_id"]: SeededUser(*row) for row in counted}
    # Fresh statistics and a visibility map, as a database that has lived for a while has.
    await conn.execute("VACUUM ANALYZE users, tasks, task_counters")
    return [
        [by_user.get(user_id, SeededUser(user_id, None, None, 0)) for user_id in group] for group in grouped
    ]


def seed(database_url: str, groups: Sequence[tuple[int, int]]) -> list[list[SeededUser]]:
    """For each (users, tasks_each) of `groups`, that many new users with that many tasks each,
    through COPY in one transaction; the users of each group, in the order of their ids.

    Blocking: call it outside an event loop. The users have a password nobody knows: sign in
    with a token (mint_token) instead.
    """
    password_hash = argon2.PasswordHasher().hash(secrets.token_urlsafe(24))

    async def run() -> list[list[SeededUser]]:
        conn = await asyncpg.connect(database_url)
        try:
            return await _seed(conn, groups, password_hash)
        finally:
            await conn.close()

    return asyncio.run(run())


def write_tokens(
    path: Path, users: Sequence[SeededUser], secret: str, ttl_seconds: int, *, issuer: str
) -> None:
    """`user_id,token` for each user, under a header line, readable by its owner only (the
    tokens are credentials): the CSV that k6, Locust, Gatling and JMeter read."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["user_id", "token"])
        for user in users:
            writer.writerow([user.user_id, mint_token(user.user_id, secret, ttl_seconds, issuer=issuer)])
