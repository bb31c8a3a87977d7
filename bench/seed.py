"""Seeding the benchmark database with COPY, minting a token per user, and writing the data
file the wrk scripts pick users, tokens and task ids from."""

import asyncio
import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import argon2
import asyncpg

from service.auth import mint_token

# Seeded tasks start this long ago, one second apart, so "newest first" is a real order.
HISTORY_START = timedelta(days=30)
SHUFFLE_SEED = 5


class SeedError(RuntimeError):
    """The seeded rows are not laid out as the scripts and pgbench expect."""


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """How much to seed: ordinary users and their tasks, the heavy user, tasks kept for deleting."""

    users: int
    tasks_per_user: int
    heavy_user_tasks: int
    deletable_tasks: int


@dataclasses.dataclass(frozen=True)
class SeededUser:
    user_id: int
    first_task_id: int
    last_task_id: int
    token: str


@dataclasses.dataclass
class Dataset:
    """What was seeded; the ordinary users' task ids are contiguous, as pgbench's script needs.

    Ordinary users are the ones the read and write scenarios pick from. The heavy user is only
    for the deep page, and the deletable tasks belong to users of their own, so that deleting
    them changes no list or get.
    """

    users: list[SeededUser]
    heavy_user: SeededUser
    deletable_users: list[SeededUser]
    tasks_per_user: int

    @property
    def first_user_id(self) -> int:
        return self.users[0].user_id

    @property
    def first_task_id(self) -> int:
        return self.users[0].first_task_id

    @property
    def deletable_count(self) -> int:
        return sum(user.last_task_id - user.first_task_id + 1 for user in self.deletable_users)

    def write_scenario_data(self, path: Path) -> None:
        """The users, their task id ranges and tokens, one per line, for bench/scenarios.lua."""
        lines = [
            "# kind user_id first_task_id last_task_id token: written by bench/seed.py for scenarios.lua"
        ]
        for kind, users in (
            ("user", self.users),
            ("heavy", [self.heavy_user]),
            ("other", self.deletable_users),
        ):
            lines += [
                f"{kind} {user.user_id} {user.first_task_id} {user.last_task_id} {user.token}"
                for user in users
            ]
        path.write_text("\n".join(lines) + "\n")

    def write_deletable_tasks(self, path: Path) -> None:
        """Every deletable task as `user_id task_id`, shuffled, each to be deleted once."""
        pairs = [
            (user.user_id, task_id)
            for user in self.deletable_users
            for task_id in range(user.first_task_id, user.last_task_id + 1)
        ]
        random.Random(SHUFFLE_SEED).shuffle(pairs)
        path.write_text("".join(f"{user_id} {task_id}\n" for user_id, task_id in pairs))


def _task_rows(
    user_ids: list[int], tasks_each: int, start: datetime, with_completed_at: bool
) -> Iterator[tuple[object, ...]]:
    """Rows in id order: each user's tasks together, each one a second newer than the last."""
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
            row: tuple[object, ...] = (
                user_id, f"Task {number}: check the weekly report", description, completed, moment, moment,
            )  # fmt: skip
            if with_completed_at:
                row += (moment if completed else None,)
            yield row


async def _seed(database_url: str, plan: SeedPlan, password_hash: str) -> list[asyncpg.Record]:
    # As many owners of deletable tasks as ordinary users, so that deleting them runs into the
    # per-user write limit (RATE_LIMIT_WRITES) no sooner than the other writes do.
    deletable_users = min(plan.users, plan.deletable_tasks)
    user_count = plan.users + 1 + deletable_users
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "users",
                columns=["email", "name", "password_hash"],
                records=(
                    (f"bench-{n}@example.com", f"Bench user {n}", password_hash) for n in range(user_count)
                ),
            )
            user_ids = [row["id"] for row in await conn.fetch("SELECT id FROM users ORDER BY id")]
            ordinary, heavy, deletable = (
                user_ids[: plan.users],
                user_ids[plan.users],
                user_ids[plan.users + 1 :],
            )
            # The schema is still growing; fill completed_at when it is there, as the service would.
            with_completed_at = bool(
                await conn.fetchval(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'tasks' AND column_name = 'completed_at'"
                )
            )
            columns = ["user_id", "title", "description", "completed", "created_at", "updated_at"]
            columns += ["completed_at"] if with_completed_at else []
            start = datetime.now(UTC) - HISTORY_START
            groups = [(ordinary, plan.tasks_per_user), ([heavy], plan.heavy_user_tasks)]
            if deletable:
                groups.append((deletable, -(-plan.deletable_tasks // len(deletable))))
            for group_user_ids, tasks_each in groups:
                await conn.copy_records_to_table(
                    "tasks",
                    columns=columns,
                    records=_task_rows(group_user_ids, tasks_each, start, with_completed_at),
                )
                start += timedelta(seconds=len(group_user_ids) * tasks_each)
        # Fresh statistics and a visibility map, as a database that has lived for a while has.
        await conn.execute("VACUUM ANALYZE users")
        await conn.execute("VACUUM ANALYZE tasks")
        return await conn.fetch(
            "SELECT user_id, min(id) AS first, max(id) AS last, count(*) AS count "
            "FROM tasks GROUP BY user_id ORDER BY user_id"
        )
    finally:
        await conn.close()


def seed(database_url: str, plan: SeedPlan, secret: str, token_ttl_seconds: int) -> Dataset:
    """Seed the plan's users and tasks with COPY and mint each user a token signed with `secret`."""
    # One real hash for everyone: nobody logs in during the run, but the column should look real.
    password_hash = argon2.PasswordHasher().hash("bench password")
    ranges = asyncio.run(_seed(database_url, plan, password_hash))
    users = []
    for row in ranges:
        if row["last"] - row["first"] + 1 != row["count"]:
            raise SeedError(f"user {row['user_id']}'s task ids are not contiguous")
        token = mint_token(row["user_id"], secret, token_ttl_seconds)
        users.append(SeededUser(row["user_id"], row["first"], row["last"], token))
    ordinary, heavy, deletable = users[: plan.users], users[plan.users], users[plan.users + 1 :]
    dataset = Dataset(ordinary, heavy, deletable, plan.tasks_per_user)
    # pgbench derives a task id from a user id: first_task_id + (user - first_user) * tasks + k.
    for user in ordinary:
        expected = dataset.first_task_id + (user.user_id - dataset.first_user_id) * plan.tasks_per_user
        if user.first_task_id != expected or user.user_id - dataset.first_user_id >= plan.users:
            raise SeedError(f"user {user.user_id}'s tasks do not start at id {expected}")
    return dataset
