"""Prometheus metrics: what is measured, the middleware and task that measure it, GET /metrics.

With several workers (`serve --workers N`) every worker writes its samples to files in
PROMETHEUS_MULTIPROC_DIR, and whichever worker a scrape reaches sums them all up.
"""

import asyncio
import bisect
import hmac
import importlib.metadata
import math
import os
import platform
import time
from collections.abc import AsyncIterator

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import multiprocess

from service.keys import METRICS_PAGE, PG_POOL, ROUTE, SETTINGS

REQUESTS = prometheus_client.Counter(
    "taskapi_http_requests_total",
    "HTTP requests answered, by route and status.",
    ["route", "method", "status"],
)
LATENCY = prometheus_client.Histogram(
    "taskapi_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = prometheus_client.Gauge(
    "taskapi_http_requests_in_flight", "HTTP requests being answered now.", multiprocess_mode="livesum"
)
POOL_CONNECTIONS = prometheus_client.Gauge(
    "taskapi_db_pool_connections",
    "Database connections of the pools: open, in use by a request, or idle.",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_WAITING = prometheus_client.Gauge(
    "taskapi_db_pool_waiting", "Requests waiting for a database connection.", multiprocess_mode="livesum"
)
DB_ERRORS = prometheus_client.Counter(
    "taskapi_db_errors_total", "Requests that failed on the database, by kind of error.", ["kind"]
)
JOB_RUNS = prometheus_client.Counter(
    "taskapi_job_runs_total",
    "Rounds of background chores, by chore and outcome (done, skipped: another worker had it, "
    "unavailable: the database was, failed).",
    ["job", "outcome"],
)
JOB_ROWS = prometheus_client.Counter(
    "taskapi_job_rows_total", "Rows background chores have removed, by chore.", ["job"]
)
WEBHOOK_DELIVERIES = prometheus_client.Counter(
    "taskapi_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered; retry: failed, tried again later; failed: "
    "the last attempt failed; superseded: the lease had run out and another worker took it).",
    ["outcome"],
)
WEBHOOK_EVENTS = prometheus_client.Counter(
    "taskapi_webhook_events_total", "Webhook deliveries queued, by event type.", ["type"]
)
WEBHOOK_QUEUE = prometheus_client.Gauge(
    "taskapi_webhook_queue_depth", "Webhook deliveries pending (due now or later).", multiprocess_mode="max"
)
WEBHOOK_OLDEST = prometheus_client.Gauge(
    "taskapi_webhook_oldest_pending_seconds",
    "How long the oldest pending webhook delivery has waited.",
    multiprocess_mode="max",
)
REMINDER_LAG = prometheus_client.Histogram(
    "taskapi_reminder_lag_seconds",
    "How long after its remind_at a reminder fired.",
    buckets=(0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
BUILD_INFO = prometheus_client.Gauge(
    "taskapi_build_info",
    "Always 1; the labels say what runs.",
    ["version", "python"],
    multiprocess_mode="max",
)
VERSION = importlib.metadata.version("task-api")  # from setup.cfg, through the installed metadata
SAMPLE_SECONDS = 1.0


class Now:
    """Counts that change twice a request, kept in plain ints and written to their gauges once
    a second: a gauge write in multiprocess mode goes through a lock and an mmap."""

    in_flight = 0
    waiting_for_connection = 0


class Tally:
    """Requests counted and timed in plain dicts, added to their series once a second (and before
    a scrape renders): in multiprocess mode each observation is a locked write to an mmap-ed
    file, three of them a request, which was 3% of a small request's CPU."""

    BOUNDS = LATENCY._upper_bounds  # the histogram's bucket bounds, +Inf last

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # (route, method) -> [count in each bucket..., sum of durations]
        self.latencies: dict[tuple[str, str], list[float]] = {}

    def add(self, route: str, method: str, status: int, seconds: float) -> None:
        counted = (route, method, str(status))
        self.requests[counted] = self.requests.get(counted, 0) + 1
        timed = (route, method)
        latency = self.latencies.get(timed)
        if latency is None:
            latency = self.latencies[timed] = [0.0] * (len(self.BOUNDS) + 1)
        latency[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        latency[-1] += seconds

    def flush(self) -> None:
        """Add what was tallied to the series, and start again."""
        requests, self.requests = self.requests, {}
        latencies, self.latencies = self.latencies, {}
        for counted, count in requests.items():
            REQUESTS.labels(*counted).inc(count)
        for timed, buckets in latencies.items():
            # A histogram has no public way to add many observations at once; its buckets and
            # sum are values like a counter's (prometheus-client keeps them as _buckets, _sum).
            series = LATENCY.labels(*timed)
            for index, observed in enumerate(buckets[:-1]):
                if observed:
                    series._buckets[index].inc(observed)
            series._sum.inc(buckets[-1])


TALLY = Tally()


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by its route's name (never its raw path: ids would make
    every task a time series of its own)."""
    started = time.perf_counter()
    Now.in_flight += 1
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        Now.in_flight -= 1
        TALLY.add(request.get(ROUTE, "unmatched"), request.method, status, time.perf_counter() - started)


async def pool_metrics(app: web.Application) -> AsyncIterator[None]:
    """Sample the pool's connections, and the counts in Now, every second while the app runs."""
    BUILD_INFO.labels(VERSION, platform.python_version()).set(1)

    async def sample() -> None:
        while True:
            pool = app[PG_POOL]
            size, idle = pool.get_size(), pool.get_idle_size()
            POOL_CONNECTIONS.labels("open").set(size)
            POOL_CONNECTIONS.labels("idle").set(idle)
            POOL_CONNECTIONS.labels("in_use").set(size - idle)
            POOL_WAITING.set(Now.waiting_for_connection)
            IN_FLIGHT.set(Now.in_flight)
            TALLY.flush()
            await asyncio.sleep(SAMPLE_SECONDS)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        TALLY.flush()


class MetricsPage:
    """The metrics in text format, rendered at most once a second per worker, off the event loop.

    A render merges every worker's files (about 15 ms of blocking reads and parsing); done on
    the event loop for every scrape, 64 clients scraping held up everyone's requests for
    seconds. Concurrent scrapes wait for the one render in progress.
    """

    MAX_AGE_SECONDS = 1.0

    def __init__(self) -> None:
        self._body = b""
        self._rendered_at = -math.inf
        self._lock = asyncio.Lock()

    async def body(self) -> bytes:
        async with self._lock:
            if time.monotonic() - self._rendered_at >= self.MAX_AGE_SECONDS:
                TALLY.flush()  # this worker's counts to the moment; the others' are at most 1 s old
                self._body = await asyncio.get_running_loop().run_in_executor(None, _render)
                self._rendered_at = time.monotonic()
            return self._body


def _render() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus_client.REGISTRY
    return prometheus_client.generate_latest(registry)


async def metrics(request: web.Request) -> web.Response:
    """The metrics in Prometheus text format: for `Bearer <METRICS_TOKEN>`, or anyone when
    METRICS_PUBLIC=1; versions and per-route counts are not for every client to read."""
    settings = request.app[SETTINGS]
    if not settings.metrics_public:
        given = request.headers.get("Authorization", "").encode()
        expected = f"Bearer {settings.metrics_token}".encode()
        if not settings.metrics_token or not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body = await request.app[METRICS_PAGE].body()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
