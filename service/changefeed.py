"""Long polling for the change feed: clients wait in the worker, woken by the listener.

A client asking to wait marks its user in task_counters (sql/changes.sql wait_for_changes), so
that the next write of that user NOTIFYs `task_changes` with the user id at commit; the worker's
one listening connection (service/listener.py) then wakes every waiter of that user here. No
waiter holds a pooled connection while it waits. When the listening connection comes back after
a loss, every waiter is woken to look again, since a notification may have been missed.
"""

import asyncio
import contextlib

import asyncpg

from service.listener import Listener

CHANNEL = "task_changes"


class ChangeWaiters:
    """The asyncio events this worker's long-polling clients wait on, one per user."""

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}
        self._waiting: dict[int, int] = {}

    async def wait(self, user_id: int, seconds: float) -> bool:
        """Wait until the user's next change commits, or `seconds` pass; whether it did."""
        event = self._events.setdefault(user_id, asyncio.Event())
        self._waiting[user_id] = self._waiting.get(user_id, 0) + 1
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
                return True
        except TimeoutError:
            return False
        finally:
            self._waiting[user_id] -= 1
            if not self._waiting[user_id]:
                del self._waiting[user_id]
                if self._events.get(user_id) is event:
                    del self._events[user_id]

    def wake(self, user_id: int) -> None:
        event = self._events.pop(user_id, None)
        if event is not None:
            event.set()  # every current waiter wakes; later ones get a new event

    def notified(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.wake(int(payload))

    async def reload(self, conn: asyncpg.Connection) -> None:
        for user_id in list(self._events):
            self.wake(user_id)

    def subscribe(self, listener: Listener) -> None:
        listener.subscribe(CHANNEL, self.notified, self.reload)
