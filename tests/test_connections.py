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


async def _dawdle(host: str, port: int, kind: str) -> tuple[str, bytes, float]:
    """A connection that is silent, or sends a request head or a body a byte every 0.3 s; what
    the service sent on it, and how long until the service closed it (15 s at most)."""
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


async def _ask_healthz(base_url: str, seconds: float) -> list[tuple[float, int]]:
    """A client that behaves, for `seconds`: a connection per request, each answered within 2 s."""
    answers = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            asked = time.monotonic()
            async with asyncio.timeout(2), http.get(f"{base_url}/healthz") as response:
                answers.append((asked - started, response.status))
            await asyncio.sleep(0.1)
    return answers


async def test_hundreds_of_slow_connections_are_cut_off_while_others_are_served(database: str) -> None:
    timeouts = {"HTTP_HEADER_TIMEOUT": "1", "HTTP_BODY_TIMEOUT": "1", "HTTP_KEEPALIVE_TIMEOUT": "2"}
    with running_service(database, RATE_LIMIT_LOGINS="0", **timeouts) as (base_url, _):
        slow = []
        for _ in range(100):
            for kind in ("silent", "head", "body"):
                slow.append(asyncio.create_task(_dawdle(*_address(base_url), kind)))
                await asyncio.sleep(0.002)
        normal = await _ask_healthz(base_url, 5)
        cut_off = await asyncio.gather(*slow)
    assert normal and all(status == 200 for _, status in normal), normal
    for kind, received, seconds in cut_off:
        # A silent one after the keep-alive timeout, a dawdling head or body after its timeout
        # (a body nobody read is then drained for 2 s more): none is left hanging.
        assert seconds < 7, (kind, received, seconds)
        if kind == "head" and received:  # else the 408 was lost to the reset of the close
            assert raw_status(received) == 408
        if kind == "body" and received:
            assert raw_status(received) == 408


async def test_connections_over_the_cap_are_refused_at_once(database: str) -> None:
    with running_service(database, MAX_CONNECTIONS="50") as (base_url, _):
        host, port = _address(base_url)
        held = [await asyncio.open_connection(host, port) for _ in range(50)]
        await asyncio.sleep(0.2)  # all 50 accepted: the cap is full
        surplus = await asyncio.gather(*(_dawdle(host, port, "silent") for _ in range(30)))
        over = await _ask_healthz(base_url, 0.5)
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.5)
        after = await _ask_healthz(base_url, 0.5)
    for _, received, seconds in surplus:
        assert raw_status(received) == 503 and b"Retry-After: 1" in received
        assert seconds < 2
    assert over and all(status == 503 for _, status in over)
    assert after and all(status == 200 for _, status in after)


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
