"""Serving: in this process, or in N worker processes that share the port; signals reach all."""

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
from collections.abc import Sequence

import uvloop
from aiohttp import web

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger("service")
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def _serve_one(settings: Settings, reuse_port: bool) -> None:
    configure_logging(settings.log_level_number, settings.log_format)  # a spawned worker starts bare
    # run_app stops on SIGTERM or SIGINT: it stops accepting, lets in-flight requests finish
    # within SHUTDOWN_TIMEOUT, then runs the cleanup contexts (closing the pool).
    web.run_app(
        create_app(settings),
        loop=uvloop.new_event_loop(),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        shutdown_timeout=settings.shutdown_timeout,
        # aiohttp's default of 128 makes a burst of new connections past it wait for the
        # client's SYN retry (1 s, then 3 s): the long tail at hundreds of clients.
        backlog=LISTEN_BACKLOG,
        print=None,
    )


def serve(settings: Settings, workers: int) -> int:
    """Serve in this process, or in `workers` processes that share the port."""
    if workers == 1:
        _serve_one(settings, reuse_port=False)
        return 0
    # Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections among
    # them; each has its own event loop and pool. Workers are spawned, not forked: a fresh
    # interpreter reads PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, so that
    # the metrics of every worker reach every scrape.
    with tempfile.TemporaryDirectory(prefix="taskapi-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_serve_one, args=(settings, True), name=f"worker-{n}")
            for n in range(workers)
        ]
        for process in processes:
            process.start()
        return _supervise(processes)


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
