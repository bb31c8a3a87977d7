"""Webhooks' background jobs: the fan-out of the change log into deliveries, the reminder
scheduler, and the delivery job, each a loop in every worker of every instance.

- **Fan-out.** Every task write appends its change to task_changes in its own transaction (the
  outbox: a rolled-back write leaves none). Each round claims subscriptions whose user has
  changes past `fanned_through` (FOR UPDATE SKIP LOCKED), renders each change once, as GET
  answers the task, into the body every attempt will send, queues one delivery per
  subscription that wants its type, and moves `fanned_through` on, in one transaction: each
  change becomes a subscription's delivery exactly once.
- **Reminders.** Each round claims the tasks whose reminder is due (SKIP LOCKED), marks them
  fired (`reminded_at`, which is no change of the task: updated_at stays, and nothing is
  recorded in the change log) and queues their `task.reminder` deliveries, in one transaction.
- **Delivery.** Each round claims due deliveries and leases them in one committed statement:
  counted as attempted and due again only after the attempt's timeout and a margin. The HTTP
  request runs outside any transaction, holding no database connection; its outcome is then
  recorded if the lease is still this attempt's. A worker that dies mid-attempt leaves the
  delivery to whoever claims it once the lease runs out: at least once, and exactly once while
  workers live. Signed as Standard Webhooks says (webhook-id, webhook-timestamp,
  webhook-signature), with no redirects followed, a 10-second timeout, at most 64 KiB of an
  answer read, and addresses checked where they are connected to (service/ssrf.py).

Every loop polls every WEBHOOK_POLL_SECONDS (with jitter), goes on at once while work remains,
waits out a database outage with backoff, and stops on shutdown: attempts in flight get a short
grace, after which they are cancelled and left to their lease.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from service.db import OUTAGE_ERRORS, queries
from service.keys import PG_POOL, SETTINGS, WEBHOOK_WAKE
from service.metrics import (
    JOB_RUNS,
    REMINDER_LAG,
    VERSION,
    WEBHOOK_DELIVERIES,
    WEBHOOK_EVENTS,
    WEBHOOK_OLDEST,
    WEBHOOK_QUEUE,
)
from service.schemas import task_document
from service.settings import Settings
from service.ssrf import PublicResolver, RefusedUrl, check_url_form, is_refused_address

log = logging.getLogger(__name__)

# A delivery to queue: user id, webhook id, event type, the change's position (if any), body.
Delivery = tuple[int, int, str, int | None, bytes]

# What each change of the log is told as. A restored task is live again after its
# task.deleted, with the same id: to a subscriber it is created (again). Purging a trashed task
# records no change, and is no event: its task.deleted was sent when it was deleted.
CHANGE_EVENTS = {
    "created": "task.created",
    "updated": "task.updated",
    "completed": "task.completed",
    "deleted": "task.deleted",
    "restored": "task.created",
}
SECRET_PREFIX = "whsec_"
TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = TIMEOUT_SECONDS + 20.0  # the attempt, and time to record its outcome
MAX_ANSWER_BYTES = 64 * 1024
CONCURRENCY = 16  # attempts in flight per worker
DB_CONNECTIONS = 2  # of the pool's, that these jobs use at once per worker
FAN_OUT_WEBHOOKS = 100  # subscriptions claimed per fan-out round
FAN_OUT_CHANGES = 500  # changes per subscription per round
REMINDERS_PER_ROUND = 500
SHUTDOWN_GRACE_SECONDS = 5.0
SAMPLE_SECONDS = 10.0
LAST_RETRY_SECONDS = 30.0


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: whsec_ and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: v1, and the base64 HMAC-SHA256 of `id.timestamp.body`
    keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def event_body(event_type: str, timestamp: datetime, data: dict[str, Any]) -> bytes:
    """An event as it is sent: `{type, timestamp, data}`, timestamps as every answer has them."""
    return orjson.dumps({"type": event_type, "timestamp": timestamp, "data": data}, option=orjson.OPT_UTC_Z)


def retry_in(settings: Settings, attempts: int) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones (jittered by up to a tenth
    either way, so that endpoints coming back are not hit by every retry at once), or None when
    the schedule is spent."""
    schedule = settings.webhook_retry_schedule
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.9, 1.1)


class Jobs:
    """One worker's webhook jobs: the HTTP client, the attempts in flight, its share of the pool."""

    def __init__(self, app: web.Application, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.settings = app[SETTINGS]
        self.session = session
        self.wake = app[WEBHOOK_WAKE]
        self.in_flight: set[asyncio.Task[None]] = set()
        self._db = asyncio.Semaphore(DB_CONNECTIONS)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; at most DB_CONNECTIONS at once, so requests keep the rest."""
        async with self._db:
            pool = self.app[PG_POOL]
            conn = await pool.acquire(timeout=self.settings.db_acquire_timeout)
            try:
                yield conn
            finally:
                await pool.release(conn)

    async def fan_out(self) -> bool:
        """One fan-out round; whether more may be waiting."""
        queued: list[str] = []
        async with self.connection() as conn, conn.transaction():
            webhooks = await queries.claim_fan_out(conn, limit=FAN_OUT_WEBHOOKS)
            if not webhooks:
                return False
            upto = {
                (w["user_id"], w["id"]): min(w["changes"], w["fanned_through"] + FAN_OUT_CHANGES)
                for w in webhooks
            }
            ranges: dict[int, tuple[int, int]] = {}
            for w in webhooks:
                after, last = ranges.get(w["user_id"], (w["fanned_through"], 0))
                ranges[w["user_id"]] = (
                    min(after, w["fanned_through"]),
                    max(last, upto[(w["user_id"], w["id"])]),
                )
            changes = await queries.changes_to_fan_out(
                conn,
                user_ids=list(ranges),
                after=[after for after, _ in ranges.values()],
                upto=[last for _, last in ranges.values()],
            )
            rendered: dict[int, list[tuple[int, str, bytes]]] = {}  # user -> [(seq, type, body)]
            for change in changes:
                event_type = CHANGE_EVENTS[change["event"]]
                if change["id"] is None:  # a deletion: the id is all there is
                    task = {"id": change["task_id"], "user_id": change["change_user_id"]}
                else:
                    task = task_document(change)
                body = event_body(event_type, change["changed_at"], {"task": task})
                rendered.setdefault(change["change_user_id"], []).append((change["seq"], event_type, body))
            rows: list[Delivery] = []
            for w in webhooks:
                user_id, last = w["user_id"], upto[(w["user_id"], w["id"])]
                for seq, event_type, body in rendered.get(user_id, ()):
                    if w["fanned_through"] < seq <= last and event_type in w["events"]:
                        rows.append((user_id, w["id"], event_type, seq, body))
                        queued.append(event_type)
            if rows:
                await _queue(conn, rows)
            await queries.advance_fan_out(
                conn,
                user_ids=[w["user_id"] for w in webhooks],
                webhook_ids=[w["id"] for w in webhooks],
                upto=[upto[(w["user_id"], w["id"])] for w in webhooks],
            )
        self._queued(queued)
        return len(webhooks) == FAN_OUT_WEBHOOKS or any(
            upto[(w["user_id"], w["id"])] < w["changes"] for w in webhooks
        )

    async def fire_reminders(self) -> bool:
        """One scheduler round; whether more may be due."""
        now = datetime.now(UTC)
        async with self.connection() as conn, conn.transaction():
            tasks = await queries.fire_reminders(conn, limit=REMINDERS_PER_ROUND)
            rows: list[Delivery] = []
            for task in tasks:
                body = event_body("task.reminder", now, {"task": task_document(task)})
                rows.extend(
                    (task["user_id"], webhook_id, "task.reminder", None, body)
                    for webhook_id in task["webhook_ids"]
                )
            if rows:
                await _queue(conn, rows)
        for task in tasks:
            if not task["completed"]:  # a completed task's reminder was only disarmed
                REMINDER_LAG.observe(max(task["lag_seconds"], 0.0))
        self._queued(["task.reminder"] * len(rows))
        return len(tasks) == REMINDERS_PER_ROUND

    def _queued(self, event_types: list[str]) -> None:
        for event_type in event_types:
            WEBHOOK_EVENTS.labels(event_type).inc()
        if event_types:
            self.wake.set()  # this worker's delivery job goes at once, not at its next poll

    async def deliver(self) -> bool:
        """Claim as many due deliveries as there are free places and start their attempts;
        whether more may be due."""
        free = CONCURRENCY - len(self.in_flight)
        if free <= 0:
            await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            return True
        async with self.connection() as conn:
            claimed = await queries.claim_deliveries(conn, limit=free, lease_seconds=LEASE_SECONDS)
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery['id']}")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(claimed) == free

    async def _attempt(self, delivery: asyncpg.Record) -> None:
        """Send one delivery once, and record what happened."""
        attempted_at = datetime.now(UTC)
        started = time.monotonic()
        status, error = await self._send(delivery)
        duration_ms = round((time.monotonic() - started) * 1000)
        delivered = status is not None and 200 <= status < 300
        retry = None if delivered else retry_in(self.settings, delivery["attempts"])
        outcome = {
            "delivery_id": delivery["id"],
            "attempt": delivery["attempts"],
            "attempted_at": attempted_at,
            "status_code": status,
            "error": error,
            "duration_ms": duration_ms,
            "delivered": delivered,
            "retry_seconds": retry,
            "disable_after": float(self.settings.webhook_disable_after),
        }
        recorded = await self._record(outcome)
        if recorded is None:
            WEBHOOK_DELIVERIES.labels("superseded").inc()
            return
        WEBHOOK_DELIVERIES.labels(
            "delivered" if delivered else "retry" if retry is not None else "failed"
        ).inc()
        if recorded["disabled"]:
            log.warning(
                "webhook disabled: it kept failing",
                extra={"user_id": delivery["user_id"], "webhook_id": delivery["webhook_id"]},
            )

    async def _send(self, delivery: asyncpg.Record) -> tuple[int | None, str | None]:
        """POST the delivery's body; the answer's status, or why there was none (words safe to
        show its owner: never an exception's text, which may name internal addresses)."""
        try:
            if not self.settings.webhook_allow_private:
                check_url_form(delivery["url"], allow_private=False)  # an IP literal meets no resolver
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"task-api-webhooks/{VERSION}",
                "webhook-id": delivery["event_id"],
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(
                    delivery["secret"], delivery["event_id"], timestamp, delivery["body"]
                ),
            }
            async with self.session.post(
                delivery["url"], data=delivery["body"], headers=headers, allow_redirects=False
            ) as answer:
                read = 0
                while read < MAX_ANSWER_BYTES:
                    chunk = await answer.content.read(MAX_ANSWER_BYTES - read)
                    if not chunk:
                        break
                    read += len(chunk)
                return answer.status, None
        except RefusedUrl:
            return None, "Refused: the URL is not https, or its address is not public."
        except TimeoutError:
            return None, f"Timed out after {TIMEOUT_SECONDS:g} seconds."
        except aiohttp.ClientConnectorError as failure:
            if is_refused_address(failure):
                return None, "Refused: the host resolves to no public address."
            return None, "Could not connect."
        except aiohttp.InvalidURL:
            return None, "The URL is not valid."
        except aiohttp.ClientError as failure:
            return None, f"The connection failed ({type(failure).__name__})."
        except Exception:
            # Whatever else breaks an attempt counts as its failure, to be retried on schedule,
            # rather than leave the delivery until its lease runs out.
            log.exception("webhook attempt failed", extra={"webhook_id": delivery["webhook_id"]})
            return None, "The request failed."

    async def _record(self, outcome: dict[str, Any]) -> asyncpg.Record | None:
        """Record an attempt's outcome, trying again through a short outage for as long as the
        lease lasts; None when the delivery is no longer this attempt's (or could not be
        recorded: then the lease runs out and it is sent again)."""
        deadline = time.monotonic() + LEASE_SECONDS - TIMEOUT_SECONDS
        retry = 0.5
        while True:
            try:
                async with self.connection() as conn:
                    row: asyncpg.Record | None = await queries.record_attempt(conn, **outcome)
                    return row
            except OUTAGE_ERRORS as error:
                if time.monotonic() + retry > deadline:
                    log.warning("webhook attempt not recorded", extra={"error": type(error).__name__})
                    return None
                await asyncio.sleep(retry)
                retry *= 2

    async def sample(self) -> bool:
        """Sample the queue for the metrics."""
        async with self.connection() as conn:
            queue = await queries.webhook_queue(conn)
        WEBHOOK_QUEUE.set(queue["pending"])
        WEBHOOK_OLDEST.set(queue["oldest_seconds"])
        return False


async def _queue(conn: asyncpg.Connection, rows: list[Delivery]) -> None:
    user_ids, webhook_ids, types, seqs, bodies = zip(*rows, strict=True)
    await queries.queue_deliveries(
        conn,
        user_ids=list(user_ids),
        webhook_ids=list(webhook_ids),
        types=list(types),
        change_seqs=list(seqs),
        bodies=list(bodies),
    )


async def _nap(seconds: float, wake: asyncio.Event | None) -> None:
    """Sleep about `seconds` (jittered, so workers started together do not poll together), or
    until woken."""
    seconds *= random.uniform(0.8, 1.2)
    if wake is None:
        await asyncio.sleep(seconds)
        return
    try:
        async with asyncio.timeout(seconds):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()


async def _repeat(
    name: str, round_: Callable[[], Awaitable[bool]], seconds: float, wake: asyncio.Event | None
) -> None:
    """Run a round every `seconds`, or at once again while it says more is waiting; wait out a
    database outage with backoff."""
    await _nap(seconds, None)
    retry = 1.0
    while True:
        try:
            more = await round_()
        except OUTAGE_ERRORS as error:
            JOB_RUNS.labels(name, "unavailable").inc()
            log.warning("webhook job postponed", extra={"job": name, "error": type(error).__name__})
            await asyncio.sleep(retry)
            retry = min(retry * 2, LAST_RETRY_SECONDS)
            continue
        except Exception:
            JOB_RUNS.labels(name, "failed").inc()
            log.exception("webhook job failed", extra={"job": name})
            more = False
        retry = 1.0
        if not more:
            await _nap(seconds, wake)


async def webhook_jobs(app: web.Application) -> AsyncIterator[None]:
    """Run the fan-out, the reminder scheduler and the delivery job while the app runs."""
    settings = app[SETTINGS]
    connector = aiohttp.TCPConnector(
        resolver=None if settings.webhook_allow_private else PublicResolver(), limit=CONCURRENCY
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
        cookie_jar=aiohttp.DummyCookieJar(),  # no endpoint's cookie goes to another
    )
    jobs = Jobs(app, session)
    poll = settings.webhook_poll_seconds
    loops = [
        asyncio.create_task(_repeat("webhook_fan_out", jobs.fan_out, poll, None), name="webhook-fan-out"),
        asyncio.create_task(_repeat("reminders", jobs.fire_reminders, poll, None), name="reminders"),
        asyncio.create_task(
            _repeat("webhook_delivery", jobs.deliver, poll, jobs.wake), name="webhook-delivery"
        ),
        asyncio.create_task(
            _repeat("webhook_queue", jobs.sample, SAMPLE_SECONDS, None), name="webhook-queue"
        ),
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        # Attempts in flight may finish; the rest are cancelled, and sent again once their
        # lease runs out.
        if jobs.in_flight:
            await asyncio.wait(set(jobs.in_flight), timeout=SHUTDOWN_GRACE_SECONDS)
        for attempt in list(jobs.in_flight):
            attempt.cancel()
        await asyncio.gather(*jobs.in_flight, return_exceptions=True)
        await session.close()
