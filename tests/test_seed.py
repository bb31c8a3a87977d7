"""The load-testing kit for outside harnesses: `python -m service seed` fills a database through
COPY and writes a token per user; bench/locustfile.py drives the bench's mix with them."""

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp

from service.db import PROJECT_DIR
from tests.conftest import TEST_SECRET, fresh_database, running_service


def seed(database_url: str, tokens: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "seed", "--tokens", str(tokens), *args],
        cwd=PROJECT_DIR,
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read_tokens(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


async def test_seeded_users_work_at_once_and_count_their_tasks(pg_server_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.csv"
    with fresh_database(pg_server_url) as database_url:
        done = seed(database_url, tokens, "--users", "3", "--tasks-per-user", "4", "--ttl", "600")
        assert done.returncode == 0, done.stderr
        rows = read_tokens(tokens)
        assert stat.S_IMODE(tokens.stat().st_mode) == 0o600  # tokens are credentials
        assert tokens.read_text().splitlines()[0] == "user_id,token"
        assert len(rows) == 3 and len({row["user_id"] for row in rows}) == 3
        # One more task than seeded is allowed: the quota counts the seeded ones.
        with running_service(database_url, MAX_TASKS_PER_USER="5") as (base_url, _):
            async with aiohttp.ClientSession(base_url) as http:
                for row in rows:
                    tasks = f"/api/{row['user_id']}/tasks"
                    headers = {"Authorization": f"Bearer {row['token']}"}
                    async with http.get(tasks, headers=headers) as answer:
                        assert answer.status == 200
                        listed = await answer.json()
                    assert len(listed) == 4
                    assert {task["user_id"] for task in listed} == {int(row["user_id"])}
                    async with http.get(f"/api/{row['user_id']}/changes", headers=headers) as answer:
                        feed = await answer.json()
                    assert sorted(change["task"]["id"] for change in feed["changes"]) == sorted(
                        task["id"] for task in listed
                    )
                    statuses = []
                    for title in ("fifth", "sixth"):
                        async with http.post(tasks, json={"title": title}, headers=headers) as answer:
                            statuses.append(answer.status)
                    assert statuses == [201, 409]
                    # The feed goes on from its first answer: the fifth task, once.
                    since = {"since": feed["cursor"]}
                    async with http.get(
                        f"/api/{row['user_id']}/changes", params=since, headers=headers
                    ) as answer:
                        later = await answer.json()
                    assert [change["task"]["title"] for change in later["changes"]] == ["fifth"]


def test_seed_refuses_what_makes_no_sense(pg_server_url: str, tmp_path: Path) -> None:
    with fresh_database(pg_server_url) as database_url:
        done = seed(database_url, tmp_path / "tokens.csv", "--users", "0", "--tasks-per-user", "4")
    assert done.returncode == 2
    assert "--users: must be at least 1" in done.stderr
    assert not (tmp_path / "tokens.csv").exists()


def test_locust_runs_the_bench_mix_on_seeded_users(pg_server_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.csv"
    with fresh_database(pg_server_url) as database_url:
        done = seed(database_url, tokens, "--users", "20", "--tasks-per-user", "20", "--ttl", "600")
        assert done.returncode == 0, done.stderr
        with running_service(database_url) as (base_url, _):
            command = [sys.executable, "-m", "locust", "-f", str(PROJECT_DIR / "bench" / "locustfile.py")]
            command += ["--tokens", str(tokens), "--host", base_url, "--headless", "--only-summary"]
            command += ["--users", "8", "--spawn-rate", "8", "--run-time", "5s"]
            command += ["--csv", str(tmp_path / "locust")]
            locust = subprocess.run(
                command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
            )
    assert locust.returncode == 0, locust.stderr[-3000:]
    with (tmp_path / "locust_stats.csv").open(newline="") as file:
        stats = {row["Name"]: row for row in csv.DictReader(file)}
    for name in ("list", "get", "create", "update", "complete", "delete"):
        assert int(stats[name]["Request Count"]) > 0, name
    assert int(stats["Aggregated"]["Failure Count"]) == 0, locust.stderr[-3000:]
    # The bench's weights: gets outnumber lists, which outnumber every write.
    counts = {name: int(stats[name]["Request Count"]) for name in stats}
    assert counts["get"] > counts["list"] > max(counts["update"], counts["complete"], counts["delete"])
