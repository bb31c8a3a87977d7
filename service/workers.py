"""Serving: in this process, or in N worker processes that share the port; signals reach all.
One instance per host and port: a second one fails at start."""

import asyncio
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress

import uvloop
from aiohttp import web

from service.app import create_app
from service.connections import ConnectionGuard, connection_cap
from service.keys import DRAINING
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger("service")
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class CannotListen(Exception):
    """The address is taken, by another instance or another program; the message says which."""


@contextmanager
def listening(settings: Settings, workers: int) -> Iterator[list[list[socket.socket]]]:
    """This instance's claim on HOST:PORT and, for each worker, its bound sockets (one per
    address HOST resolves to); all released on exit.

    With several workers, each gets sockets of its own with SO_REUSEPORT, so the kernel spreads
    connections evenly among them. SO_REUSEPORT would also let a second instance bind the same
    port and silently take half the traffic, so the instance first takes a lock only this
    service takes: an abstract Unix socket named after HOST:PORT. The kernel releases it when
    the last process holding it ends, however it ends (no stale lock file), and it lives in the
    network namespace, as ports do. Binding once and sharing one socket among the workers
    would exclude a second instance too, but a shared accept queue spreads connections unevenly
    (one worker may take a whole burst). The sockets are bound here, before the workers start,
    so a port held by another program is also one clear line, not N dying workers.
    """
    with ExitStack() as stack:
        lock = _instance_lock(settings.host, settings.port)
        if lock is not None:
            stack.callback(lock.close)
        addresses = _addresses(settings.host, settings.port)
        per_worker = []
        for _ in range(workers):
            sockets = [_bind(address, reuse_port=workers > 1) for address in addresses]
            for sock in sockets:
                stack.callback(sock.close)
            per_worker.append(sockets)
        yield per_worker


def _instance_lock(host: str, port: int) -> socket.socket | None:
    if not sys.platform.startswith("linux"):  # abstract Unix sockets are Linux's
        return None
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0task-api {host}:{port}")
    except OSError as error:
        lock.close()
        if error.errno == errno.EADDRINUSE:
            raise CannotListen(f"another instance of the service is already serving {host}:{port}") from None
        raise
    return lock


def _addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CannotListen(f"cannot listen on {host}:{port}: {error.strerror}") from None
    unique = {(family, (str(address[0]), int(address[1]))): None for family, _, _, _, address in found}
    return list(unique)


def _bind(address: tuple[socket.AddressFamily, tuple[str, int]], *, reuse_port: bool) -> socket.socket:
    family, (host, port) = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 twin binds alone
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def serve(settings: Settings, sockets: Sequence[list[socket.socket]]) -> int:
    """Serve in this process, or in one worker process for each list of sockets."""
    if len(sockets) == 1:
        _serve_one(settings, sockets[0])
        return 0
    # Workers are spawned, not forked: a fresh interpreter reads PROMETHEUS_MULTIPROC_DIR before
    # it imports prometheus_client, so that the metrics of every worker reach every scrape.
    with tempfile.TemporaryDirectory(prefix="taskapi-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_serve_one, args=(settings, worker_sockets), name=f"worker-{n}")
            for n, worker_sockets in enumerate(sockets)
        ]
        for process in processes:
            process.start()
        for worker_sockets in sockets:  # the workers have their own copies now
            for sock in worker_sockets:
                sock.close()
        return _supervise(processes)


def _serve_one(settings: Settings, sockets: list[socket.socket]) -> None:
    """Serve on `sockets` until SIGTERM or SIGINT, as aiohttp's run_app does, but with the
    connection guard as the listening sockets' protocol factory, and a drain first."""
    configure_logging(settings.log_level_number, settings.log_format)  # a spawned worker starts bare
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings, sockets))
    try:
        loop.run_until_complete(main)
    except KeyboardInterrupt:  # before the signal handlers were in place
        pass
    finally:
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(settings: Settings, sockets: list[socket.socket]) -> None:
    """Serve until SIGTERM or SIGINT, then stop as a load balancer needs it.

    On SIGTERM, /readyz first answers 503 for SHUTDOWN_DRAIN_SECONDS while everything else is
    served as before, so that the balancer's health checks take the instance out of rotation
    before it stops listening: no request is then sent to a closed port. It then stops
    accepting, lets in-flight requests finish within SHUTDOWN_TIMEOUT, and runs the cleanup
    contexts (closing the pool). SIGINT (Ctrl-C) and a second signal skip the drain.
    """
    app = create_app(settings)
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def signalled(signum: signal.Signals) -> None:
        if stop.is_set() or signum == signal.SIGINT:
            hurry.set()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled, signum)
    runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, settings, connection_cap(settings))
    listeners = []
    try:
        for sock in sockets:
            # aiohttp's default backlog of 128 makes a burst of new connections past it wait for
            # the client's SYN retry (1 s, then 3 s): the long tail at hundreds of clients.
            listeners.append(await loop.create_server(guard, sock=sock, backlog=LISTEN_BACKLOG))
        await stop.wait()
        if settings.shutdown_drain_seconds and not hurry.is_set():
            app[DRAINING].set()
            log.info("draining: /readyz answers 503", extra={"seconds": settings.shutdown_drain_seconds})
            with suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), settings.shutdown_drain_seconds)
    finally:
        for listener in listeners:
            listener.close()
        await runner.cleanup()


def _supervise(processes: Sequence[multiprocessing.process.BaseProcess]) -> int:
    """Pass SIGTERM and SIGINT on to every worker; when one worker ends, end them all."""
    signalled: set[int] = set()

    def forward(signum: int, frame: object) -> None:
        # Once per worker: a second signal would interrupt its graceful shutdown.
        for process in processes:
            if process.is_alive() and process.pid is not None and process.pid not in signalled:
                signalled.add(process.pid)
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # A supervisor (systemd, Kubernetes) then restarts the service whole, rather than running
    # it short of a worker.
    multiprocessing.connection.wait([process.sentinel for process in processes])
    forward(signal.SIGTERM, None)
    for process in processes:
        process.join()
    if any(process.exitcode not in (0, -signal.SIGTERM) for process in processes):
        log.error("worker ended unexpectedly", extra={"exit_codes": [p.exitcode for p in processes]})
        return 1
    return 0
