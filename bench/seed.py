"""Seeding the benchmark database (with service/seed.py, as `python -m service seed` does), minting
a token per user, and writing the data file the wrk scripts pick users, tokens and task ids from."""

import dataclasses
import random
from pathlib import Path

import psycopg

from service.auth import mint_token
from service.seed import SeededUser
from service.seed import seed as service_seed

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
class BenchUser:
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

    users: list[BenchUser]
    heavy_user: BenchUser
    deletable_users: list[BenchUser]
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


def seed(database_url: str, plan: SeedPlan, secret: str, token_ttl_seconds: int) -> Dataset:
    """Seed the plan's users and tasks (service/seed.py: COPY, and the task counters) and mint
    each user a token signed with `secret`."""
    # As many owners of deletable tasks as ordinary users, so that deleting them runs into the
    # per-user write limit (RATE_LIMIT_WRITES) no sooner than the other writes do.
    deletable_owners = min(plan.users, plan.deletable_tasks)
    groups = [(plan.users, plan.tasks_per_user), (1, plan.heavy_user_tasks)]
    if deletable_owners:
        groups.append((deletable_owners, -(-plan.deletable_tasks // deletable_owners)))
    seeded = service_seed(database_url, groups)
    ordinary, (heavy,), deletable = seeded[0], seeded[1], seeded[2] if deletable_owners else []

    def with_token(user: SeededUser) -> BenchUser:
        if user.first_task_id is None or user.last_task_id is None:
            raise SeedError(f"user {user.user_id} has no tasks")
        if user.last_task_id - user.first_task_id + 1 != user.tasks:
            raise SeedError(f"user {user.user_id}'s task ids are not contiguous")
        token = mint_token(user.user_id, secret, token_ttl_seconds)
        return BenchUser(user.user_id, user.first_task_id, user.last_task_id, token)

    dataset = Dataset(
        [with_token(user) for user in ordinary],
        with_token(heavy),
        [with_token(user) for user in deletable],
        plan.tasks_per_user,
    )
    # pgbench derives a task id from a user id: first_task_id + (user - first_user) * tasks + k.
    for user in dataset.users:
        expected = dataset.first_task_id + (user.user_id - dataset.first_user_id) * plan.tasks_per_user
        if user.first_task_id != expected or user.user_id - dataset.first_user_id >= plan.users:
            raise SeedError(f"user {user.user_id}'s tasks do not start at id {expected}")
    return dataset


def forget_later_tasks(database_url: str, dataset: Dataset) -> None:
    """Put the ordinary users' tasks back as seeded: delete the ones made since (the bare app's
    creates), with their changes, and count the rest again. The service's list row answers
    every task of a user (the original contract's unpaged list), so without this it would list
    the bare app's 60 or so extra tasks a user too, and its ÷ bare would measure page sizes."""
    user_ids = [user.user_id for user in dataset.users]
    last_ids = [user.last_task_id for user in dataset.users]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """
            WITH seeded AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[]) AS s (user_id, last_id)),
            gone AS (
                DELETE FROM tasks USING seeded
                WHERE tasks.user_id = seeded.user_id AND tasks.id > seeded.last_id
            ),
            forgotten AS (
                DELETE FROM task_changes USING seeded
                WHERE task_changes.user_id = seeded.user_id AND task_changes.task_id > seeded.last_id
            )
            UPDATE task_counters SET tasks = %s FROM seeded WHERE task_counters.user_id = seeded.user_id
            """,
            (user_ids, last_ids, dataset.tasks_per_user),
        )
        conn.execute("VACUUM ANALYZE tasks, task_changes, task_counters")
