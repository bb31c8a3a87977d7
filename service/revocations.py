"""Revoked credentials: the one path by which a session (`session:<id>`), an API token
(`api_token:<id>`) or a deleted account (`user:<id>`) stops working before its tokens expire.

A revocation is a row in `revocations` (what, and until when a token it covers could still be
valid) written in the same transaction as the change that causes it, with a NOTIFY on the
`revocations` channel. Every worker keeps the live rows in memory: loaded whenever its listening
connection is made (so one missed while it was down still counts once it is back), added to on
each notification and, in the worker that revokes, at once. Checking a token is then a lookup
in a dict, with no database round trip.
"""

import time
from collections.abc import Iterable

import asyncpg

from service.db import queries
from service.listener import Listener

CHANNEL = "revocations"


class Revocations:
    """The revoked credentials this worker knows of, each until its tokens would expire."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def __contains__(self, credential: str) -> bool:
        return credential in self._until

    def add(self, rows: Iterable[tuple[str, float]]) -> None:
        now = time.time()
        for credential, until in rows:
            if until > now:
                self._until[credential] = until

    def notified(self, payload: str) -> None:
        """A notification's payload: `<credential> <until as Unix seconds>`."""
        credential, _, until = payload.partition(" ")
        self.add([(credential, float(until))])

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Replace what this worker knows with the live rows; expired ones drop out here."""
        rows = await queries.live_revocations(conn)
        self._until = {}
        self.add((row["credential"], row["until"]) for row in rows)

    def subscribe(self, listener: Listener) -> None:
        listener.subscribe(CHANNEL, self.notified, self.reload)
