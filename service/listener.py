"""The worker's one LISTEN connection: PostgreSQL notifications reach in-process subscribers.

Each worker keeps a single dedicated connection (never one of the pool's) listening on every
channel something subscribed to. Notifications are delivered only while it is connected, so a
subscriber also says what to reload each time the connection is (re)made: whatever was notified
while it was down is then read from its table instead, and nothing is missed for good. The
connection is checked every few seconds and made again, with backoff, after it fails.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from service.db import OUTAGE_ERRORS, hide_password
from service.keys import LISTENER, SETTINGS

log = logging.getLogger(__name__)

PING_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 5.0
FIRST_RETRY_SECONDS = 0.2
LAST_RETRY_SECONDS = 5.0
APPLICATION_NAME = "taskapi-listener"

Notified = Callable[[str], None]
Reload = Callable[[asyncpg.Connection], Awaitable[None]]


class Listener:
    """Subscriptions by channel, and the loop that keeps their connection alive."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._channels: dict[str, list[Notified]] = {}
        self._reloads: list[Reload] = []

    def subscribe(self, channel: str, notified: Notified, reload: Reload) -> None:
        """Call `notified(payload)` for each notification on `channel`, and `reload(conn)` each
        time the connection is made, after it listens (so nothing falls between the two)."""
        self._channels.setdefault(channel, []).append(notified)
        self._reloads.append(reload)

    def _dispatch(self, conn: object, pid: int, channel: str, payload: str) -> None:
        for notified in self._channels.get(channel, ()):
            try:
                notified(payload)
            except Exception:
                log.exception("a notification handler failed", extra={"channel": channel})

    async def run(self) -> None:
        """Listen until cancelled, connecting again whenever the connection is lost."""
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                await self._listen_once()
                log.warning("listener connection lost; connecting again")
                delay = FIRST_RETRY_SECONDS  # it was up: start the backoff anew
            except (*OUTAGE_ERRORS, asyncpg.PostgresError) as error:
                log.warning(
                    "listener cannot connect; retrying",
                    extra={"error": type(error).__name__, "retry_in_s": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_RETRY_SECONDS)

    async def _listen_once(self) -> None:
        """Connect, listen, reload, then wait until the connection is lost."""
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": APPLICATION_NAME},
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            for channel in self._channels:
                await conn.add_listener(channel, self._dispatch)
            for reload in self._reloads:
                await reload(conn)
            while not lost.is_set():
                try:
                    async with asyncio.timeout(PING_SECONDS):
                        await lost.wait()
                except TimeoutError:
                    # A connection cut without a FIN is noticed only by using it.
                    async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                        await conn.execute("SELECT 1")
        finally:
            conn.terminate()


async def listener(app: web.Application) -> AsyncIterator[None]:
    """Run the worker's listener for as long as the app runs; subscribers are added before
    start-up (in create_app), and start-up does not wait for the database."""
    settings = app[SETTINGS]
    log.info("listening to PostgreSQL", extra={"database": hide_password(settings.listen_url)})
    task = asyncio.create_task(app[LISTENER].run(), name="listener")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
