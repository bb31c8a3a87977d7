"""`--webhooks`: the write scenarios again with every user subscribed to a local receiver, to
show what the outbox costs a write. The receiver (`python -m bench.webhooks --port N`) is an
aiohttp app in a process of its own that answers every delivery 204 at once; the service runs
with WEBHOOK_ALLOW_PRIVATE=1 so that it may deliver to 127.0.0.1."""

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
from aiohttp import web

from service.db import PROJECT_DIR
from service.webhooks import new_secret

# The scenarios run again with webhooks: the writes whose data is not used up by their first run
# (delete consumes its provisioned tasks).
WEBHOOK_SCENARIOS = ("create", "update", "complete", "batch")
READY_TIMEOUT_SECONDS = 10.0


class Receiver:
    """The receiving process, on 127.0.0.1:`port`."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Receiver":
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.webhooks", "--port", str(self.port)],
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def subscribe_everyone(database_url: str, url: str) -> int:
    """Subscribe every user to every task event at `url`, as POST /webhooks would (from their
    current change position on); returns how many."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        cursor = conn.execute(
            "INSERT INTO webhooks (user_id, url, events, secret, fanned_through)"
            " SELECT users.id, %s, %s, %s, coalesce(task_counters.changes, 0)"
            " FROM users LEFT JOIN task_counters ON task_counters.user_id = users.id",
            (url, ["task.created", "task.updated", "task.completed", "task.deleted"], new_secret()),
        )
        return cursor.rowcount


def delivery_counts(database_url: str) -> dict[str, int]:
    """Deliveries by state, and changes not yet fanned out."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        counts = {str(state): int(count) for state, count in conn.execute(
            "SELECT state, count(*) FROM webhook_deliveries GROUP BY state"
        )}  # fmt: skip
        behind = conn.execute(
            "SELECT coalesce(sum(task_counters.changes - webhooks.fanned_through), 0) FROM webhooks"
            " JOIN task_counters ON task_counters.user_id = webhooks.user_id"
        ).fetchone()
        counts["not fanned out"] = int(behind[0]) if behind else 0
        return counts


def _app() -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
