"""Locust, for teams whose harness it is: the mix `make bench` runs, on users that
`python -m service seed` made, with the tokens it wrote.

    python -m service seed --users 1000 --tasks-per-user 100 --tokens tokens.csv --ttl 3600
    python -m service serve
    locust -f bench/locustfile.py --tokens tokens.csv --host http://127.0.0.1:8080 \
        --headless --users 64 --spawn-rate 64 --run-time 1m

As bench/scenarios.lua does, every request picks a random seeded user and one of that user's
seeded tasks: 20% list, 50% get, 10% create, 8% update, 7% complete, 5% delete (of tasks this
process created, so each is deleted once and no get meets a deleted task). A user's seeded
tasks are learned from the first list of that user, the request that user gets first.
Requests are named by route (list, get, …), so Locust's table reads like the bench's.
"""

import csv
import random
import time
from datetime import datetime
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

# Tasks created before the run are the seeded ones; newer ones may be this mix's own (deletable).
STARTED = time.time()


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--tokens", default="tokens.csv", help="the user_id,token CSV of `python -m service seed`"
    )


class Account:
    """A seeded user: its token, the seeded tasks learned so far, and tasks the mix created."""

    def __init__(self, user_id: str, token: str) -> None:
        self.tasks = f"/api/{user_id}/tasks"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.seeded: list[int] | None = None  # None until its first list
        self.created: list[int] = []


ACCOUNTS: list[Account] = []


@events.init.add_listener
def _load_accounts(environment: Environment, **kwargs: Any) -> None:
    if environment.parsed_options is None:
        return
    with open(environment.parsed_options.tokens, newline="") as file:
        ACCOUNTS.extend(Account(row["user_id"], row["token"]) for row in csv.DictReader(file))
    if not ACCOUNTS:
        raise SystemExit(f"{environment.parsed_options.tokens} lists no users")


def _seeded_ids(tasks: list[dict[str, Any]]) -> list[int]:
    return [t["id"] for t in tasks if datetime.fromisoformat(t["created_at"]).timestamp() < STARTED]


class TaskApiUser(FastHttpUser):
    """One connection sending the next request as soon as the last is answered, as wrk's do.
    Locust counts every answer of 400 or more as a failure."""

    wait_time = constant(0)

    def _list(self, account: Account) -> None:
        answer = self.client.get(account.tasks, headers=account.headers, name="list")
        if answer.status_code == 200 and account.seeded is None:
            account.seeded = _seeded_ids(answer.json())

    def _seeded_task(self) -> tuple[Account, int] | None:
        """A random account and one of its seeded tasks; if its tasks are not known yet, that
        account's first list instead, and None."""
        account = random.choice(ACCOUNTS)
        if not account.seeded:
            self._list(account)
            return None
        return account, random.choice(account.seeded)

    def _create(self, account: Account) -> None:
        body = {"title": f"Locust task {random.randrange(1_000_000)}"}
        answer = self.client.post(account.tasks, json=body, headers=account.headers, name="create")
        if answer.status_code == 201:
            account.created.append(answer.json()["id"])

    @task(20)
    def list_tasks(self) -> None:
        self._list(random.choice(ACCOUNTS))

    @task(50)
    def get_task(self) -> None:
        if picked := self._seeded_task():
            account, task_id = picked
            self.client.get(f"{account.tasks}/{task_id}", headers=account.headers, name="get")

    @task(10)
    def create_task(self) -> None:
        self._create(random.choice(ACCOUNTS))

    @task(8)
    def update_task(self) -> None:
        if picked := self._seeded_task():
            account, task_id = picked
            body = {"title": f"Renamed by Locust {random.randrange(1_000_000)}"}
            self.client.put(f"{account.tasks}/{task_id}", json=body, headers=account.headers, name="update")

    @task(7)
    def complete_task(self) -> None:
        if picked := self._seeded_task():
            account, task_id = picked
            path = f"{account.tasks}/{task_id}/complete"
            self.client.patch(path, headers=account.headers, name="complete")

    @task(5)
    def delete_task(self) -> None:
        account = random.choice(ACCOUNTS)
        if not account.created:
            self._create(account)  # nothing of its own to delete yet, as the Lua mix does
            return
        self.client.delete(f"{account.tasks}/{account.created.pop()}", headers=account.headers, name="delete")
