"""Revocations reach every worker of every instance, through PostgreSQL alone: real service
processes, real connections pinned to each worker, and a listener connection cut on purpose."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from service.db import queries
from tests.conftest import free_port, running_service


async def _register(base_url: str) -> dict[str, Any]:
    account = {"email": f"{time.time_ns()}@example.com", "password": "analytical engine", "name": "R"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/api/auth/register", json=account) as answer,
    ):
        assert answer.status == 201
        grant: dict[str, Any] = await answer.json()
        return grant


def _worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def _pid_serving(client_port: int, server_port: int, pids: set[int]) -> int:
    """The worker process holding the server end of the connection from `client_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().as_posix() in inodes:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds the connection from port {client_port}")


class PinnedConnection:
    """One keep-alive connection, and so one worker; requests on it always reach that worker."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # Its own client port, so the test can find the worker that holds the other end; a
        # second connection would fail to bind it, so every request travels on this one.
        self.client_port = free_port()
        connector = aiohttp.TCPConnector(limit=1, local_addr=("127.0.0.1", self.client_port))
        self.http = aiohttp.ClientSession(connector=connector)

    async def status(self, path: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get(f"{self.base_url}{path}", headers=headers) as answer:
            await answer.read()
            return answer.status


async def _one_connection_per_worker(base_url: str, supervisor: int, token: str) -> list[PinnedConnection]:
    """Open connections until every worker of the instance holds one; keep one per worker."""
    pids = _worker_pids(supervisor)
    port = urlsplit(base_url).port
    assert port is not None
    chosen: dict[int, PinnedConnection] = {}
    try:
        for _ in range(64):
            connection = PinnedConnection(base_url)
            try:
                assert await connection.status("/api/auth/me", token) == 200
                pid = _pid_serving(connection.client_port, port, pids)
            except BaseException:
                await connection.http.close()
                raise
            if pid in chosen:
                await connection.http.close()
            else:
                chosen[pid] = connection
            if len(chosen) == len(pids):
                return list(chosen.values())
        raise AssertionError(f"the kernel never sent a connection to some of the workers {pids}")
    except BaseException:
        for connection in chosen.values():
            await connection.http.close()
        raise


async def every_worker_refuses_within_a_second(
    connections: list[PinnedConnection], path: str, token: str, revoked_at: float
) -> None:
    """Poll each pinned connection (each worker) until it refuses the token: all within 1 s."""

    async def refused_after(connection: PinnedConnection) -> float:
        while await connection.status(path, token) != 401:
            assert time.monotonic() - revoked_at < 5, "a worker still accepts the token"
            await asyncio.sleep(0.02)
        return time.monotonic() - revoked_at

    delays = await asyncio.gather(*(refused_after(connection) for connection in connections))
    assert max(delays) < 1.0, delays


async def test_logout_reaches_every_worker_of_every_instance_within_a_second(database_url: str) -> None:
    with (
        running_service(database_url, workers=2) as (first_url, first),
        running_service(database_url, workers=2) as (second_url, second),
    ):
        grant = await _register(first_url)
        token = grant["access_token"]
        connections = await _one_connection_per_worker(first_url, first.pid, token)
        connections += await _one_connection_per_worker(second_url, second.pid, token)
        assert len(connections) == 4
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{first_url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"}
                ) as answer,
            ):
                assert answer.status == 204
            await every_worker_refuses_within_a_second(connections, "/api/auth/me", token, time.monotonic())
        finally:
            for connection in connections:
                await connection.http.close()


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test can take down and bring back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def listen_proxy(database_url: str) -> AsyncIterator[Proxy]:
    server = urlsplit(database_url)
    assert server.hostname is not None and server.port is not None
    proxy = Proxy(server.hostname, server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        if proxy._server is not None and proxy._server.is_serving():
            await proxy.stop()


async def test_a_revocation_missed_while_the_listener_was_down_counts_once_it_is_back(
    database_url: str, listen_proxy: Proxy
) -> None:
    server = urlsplit(database_url)
    through_proxy = urlunsplit(server._replace(netloc=f"{server.username}@127.0.0.1:{listen_proxy.port}"))
    with running_service(database_url, DB_LISTEN_URL=through_proxy) as (base_url, _):
        grant = await _register(base_url)
        token, user_id = grant["access_token"], grant["user"]["id"]
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:

            async def status() -> int:
                async with http.get(f"{base_url}/api/auth/me", headers=headers) as answer:
                    return answer.status

            assert await status() == 200
            await listen_proxy.stop()  # the listener's connection is cut, and it cannot come back
            conn = await asyncpg.connect(database_url)
            try:  # another instance revokes the session meanwhile: its NOTIFY reaches no one here
                revoked = await queries.revoke_sessions(
                    conn, user_id=user_id, session_id=None, keep_session_id=None, access_ttl_seconds=960
                )
                assert len(revoked) == 1
            finally:
                await conn.close()
            await asyncio.sleep(1.5)
            assert await status() == 200, "the notification was missed, so the token still works"
            await listen_proxy.start()
            deadline = time.monotonic() + 15
            while await status() != 401:
                assert time.monotonic() < deadline, "the revocation never took effect"
                await asyncio.sleep(0.1)
