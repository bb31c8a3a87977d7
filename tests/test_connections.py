"""Connections, on the real service in processes of its own: malformed requests refused without
logging them, slow and surplus connections cut off while others are served, one instance per
port."""

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from service.auth import mint_token
from service.db import PROJECT_DIR
from tests.conftest import TEST_SECRET, fresh_database, raw_http, raw_status, running_service


@pytest.fixture(scope="module")
def database(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url) as url:
        yield url


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def test_malformed_requests_are_one_warning_without_their_content(
    database: str, tmp_path: Path
) -> None:
    password, token = "hunter2-in-the-log", mint_token(7, TEST_SECRET, 600)
    body = orjson.dumps({"email": "leak@example.com", "password": password})
    malformed = [
        # bare LF line endings
        b"POST /api/auth/login HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
        + f"Authorization: Bearer {token}\nContent-Length: {len(body)}\n\n".encode()
        + body,
        # an obs-folded header line, carrying the token
        b"POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"X-Note: folded\r\n Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body,
    ]
    log_path = tmp_path / "service.log"
    with (
        log_path.open("wb") as log,
        running_service(database, log=log, LOG_LEVEL="DEBUG") as (base_url, _),
    ):
        answers = [await raw_http(*_address(base_url), request) for request in malformed]
        await asyncio.sleep(0.5)
    output = log_path.read_text()
    for answer in answers:
        assert raw_status(answer) == 400
        assert b"application/problem+json" in answer
        assert password.encode() not in answer and token.encode() not in answer
    for secret in (password, token, "leak@example.com"):
        assert secret not in output
    entries = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    refused = [entry for entry in entries if entry["message"] == "refused a malformed HTTP request"]
    assert [entry["level"] for entry in refused] == ["WARNING", "WARNING"]
    assert not [entry for entry in entries if entry["level"] in ("ERROR", "CRITICAL")]
    assert "Traceback" not in output


async def test_slow_and_surplus_connections_are_cut_off_while_others_are_served(database: str) -> None:
    slow_kinds = 100  # of each kind: silent, a head a byte at a time, a body a byte at a time
    cap = 240  # of the 300 slow connections, 60 are over the cap
    settings = {
        "HTTP_HEADER_TIMEOUT": "1",
        "HTTP_BODY_TIMEOUT": "1",
        "HTTP_KEEPALIVE_TIMEOUT": "2",
        "MAX_CONNECTIONS": str(cap),
        "RATE_LIMIT_LOGINS": "0",
    }
    with running_service(database, **settings) as (base_url, _):
        host, port = _address(base_url)

        async def slow(kind: str) -> tuple[str, bytes, float]:
            """Opens a connection that dawdles; returns what the service sent and when it closed."""
            reader, writer = await asyncio.open_connection(host, port)
            started = time.monotonic()
            if kind == "head":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            elif kind == "body":
                writer.write(
                    b"POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
            received = b""
            try:
                async with asyncio.timeout(15):
                    while True:
                        try:
                            chunk = await asyncio.wait_for(reader.read(4096), 0.3)
                        except TimeoutError:
                            if kind != "silent":
                                writer.write(b"X" if kind == "head" else b" ")  # a byte at a time
                            continue
                        if not chunk:
                            break
                        received += chunk
            except (ConnectionError, TimeoutError):
                pass
            finally:
                writer.close()
            return kind, received, time.monotonic() - started

        slow_tasks = []
        for _ in range(slow_kinds):
            for kind in ("silent", "head", "body"):
                slow_tasks.append(asyncio.create_task(slow(kind)))
                await asyncio.sleep(0.002)

        # Meanwhile a client that behaves: a connection per request, every answer within 2 s.
        normal: list[tuple[float, int]] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            started = time.monotonic()
            while time.monotonic() - started < 8:
                asked = time.monotonic()
                async with asyncio.timeout(2), http.get(f"{base_url}/healthz") as response:
                    normal.append((asked - started, response.status))
                await asyncio.sleep(0.1)
        slow_results = await asyncio.gather(*slow_tasks)

    refused = [result for result in slow_results if raw_status_or_none(result[1]) == 503]
    assert len(refused) >= 300 - cap - 5, len(refused)  # the surplus, refused...
    assert all(seconds < 2 for _, _, seconds in refused)  # ...quickly
    for kind, received, seconds in slow_results:
        if raw_status_or_none(received) == 503:
            continue
        # Cut off: a silent one after the keep-alive timeout, a dawdling head or body after
        # its timeout (a body then lingers up to 2 s more), none left hanging.
        assert seconds < 7, (kind, received, seconds)
        if kind == "head" and received:  # else the 408 was lost to the reset of the close
            assert raw_status(received) == 408
    assert all(status in (200, 503) for _, status in normal)
    assert [status for when, status in normal if when > 6] and all(
        status == 200 for when, status in normal if when > 6
    ), normal  # once the slow ones are cut off, all is well


def raw_status_or_none(answer: bytes) -> int | None:
    return raw_status(answer) if answer.startswith(b"HTTP/") else None


def test_a_second_instance_on_the_same_port_fails_at_start_with_one_line(database: str) -> None:
    with running_service(database, workers=2) as (base_url, first):
        host, port = _address(base_url)
        for workers in ("2", "1"):
            env = {
                **os.environ,
                "DATABASE_URL": database,
                "JWT_SECRET": TEST_SECRET,
                "HOST": host,
                "PORT": str(port),
                "LOG_LEVEL": "WARNING",
            }
            second = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
                [sys.executable, "-m", "service", "serve", "--workers", workers],
                cwd=PROJECT_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 1, second
            (line,) = (second.stdout + second.stderr).strip().splitlines()
            assert orjson.loads(line)["message"] == (
                f"another instance of the service is already serving {host}:{port}"
            )
        assert first.poll() is None
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=5) as response:
            assert response.status == 200
