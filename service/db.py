"""The PostgreSQL side: the asyncpg pool's lifecycle, the named queries in sql/, and migrations."""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from yoyo import get_backend, read_migrations
from yoyo.backends import DatabaseBackend
from yoyo.migrations import MigrationList

from service.keys import PG_GATE, PG_POOL, POOL_SHARES, SETTINGS, USER_ID
from service.metrics import Now
from service.queries import Queries

PROJECT_DIR = Path(__file__).resolve().parent.parent
SQL_DIR = PROJECT_DIR / "sql"
MIGRATIONS_DIR = PROJECT_DIR / "migrations"

# Read once at import, before any event loop runs; every file's queries share one namespace:
# queries.get_task(conn, user_id=..., task_id=...).
queries = Queries(SQL_DIR)


class DatabaseUnavailable(Exception):
    """The database cannot serve this request now: answered 503 with Retry-After, not 500.

    Raised by connection() from the error that said so (its __cause__): the database is
    refused, gone, restarting, out of connections or too slow, or the connection broke.
    """


# What acquiring (and so maybe connecting) raises when the database cannot serve now.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # shutting down, starting up, crashed, query cancelled
    asyncpg.InsufficientResourcesError,  # too many connections, out of memory or disk
)
# What a query raises when the server or the connection failed under it. OSError is not here:
# asyncpg reports a lost socket as ConnectionDoesNotExistError, and an OSError in a request
# holding a connection is the client's (a reset while a streamed answer is written).
_QUERY_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # command_timeout
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InternalClientError,  # a protocol left mid-operation by a failure
)
# Kept for callers that catch "the database is unavailable" around connection().
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable,)
# What a loop with connections of its own (the listener, the background chores) waits out and
# tries again after: the database is unreachable, gone, restarting or too slow.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (*_CONNECT_ERRORS, *_QUERY_ERRORS, asyncpg.InterfaceError)

log = logging.getLogger(__name__)


# Query parameters of a connection URL that hold a secret (libpq's and asyncpg's names).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def hide_password(url: str) -> str:
    """The URL with every credential it can carry replaced, fit for logs: the password in
    `user:password@`, and `?password=` and `?sslpassword=` in the query."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        f"{pair.partition('=')[0]}=***"
        if unquote(pair.partition("=")[0]).strip().lower() in _SECRET_PARAMETERS
        else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@asynccontextmanager
async def connection(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, waited for in turn and at most DB_ACQUIRE_TIMEOUT seconds.

    Requests queue at PG_GATE, a semaphore as large as the pool: it is first come, first
    served, where asyncpg's own queue lets a newcomer take a connection released for a waiter,
    which then waits again at the back; under hundreds of clients some requests starved until
    they timed out.
    """
    app = request.app
    gate, pool = app[PG_GATE], app[PG_POOL]
    # A user's requests first take one of the user's own share of the pool, so that one user
    # with many requests at once waits behind their own, not ahead of everyone else.
    user_id = request.get(USER_ID)
    shares = app[POOL_SHARES] if user_id is not None else None
    Now.waiting_for_connection += 1
    try:
        if gate.locked() or pool.get_idle_size() == 0 or (shares is not None and shares.busy(user_id)):
            async with asyncio.timeout(app[SETTINGS].db_acquire_timeout):
                conn = await _acquire(gate, pool, shares, user_id)
        else:
            # Nothing to wait for, so no timer: arming one was 6% of a small request's CPU.
            conn = await _acquire(gate, pool, shares, user_id)
    except _CONNECT_ERRORS as error:
        raise DatabaseUnavailable(type(error).__name__) from error
    finally:
        Now.waiting_for_connection -= 1
    try:
        yield conn
    except Exception as error:
        if not isinstance(error, _QUERY_ERRORS) and not (
            isinstance(error, asyncpg.InterfaceError) and _closed(conn)
        ):
            raise  # the request's own error, or one PostgreSQL reported on a sound session
        # A connection that took part in a failure is never handed out again: released as it
        # is (with no reset query to find out), a protocol still consuming a crashed server's
        # error answered the next request's query with InternalClientError, a 500.
        with suppress(asyncpg.InterfaceError):  # closed already, and so taken back by the pool
            conn.terminate()
        raise DatabaseUnavailable(type(error).__name__) from error
    finally:
        try:
            await pool.release(conn)
        finally:
            gate.release()
            if shares is not None:
                shares.release(user_id)


def _closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took the connection back when it closed
        return True


async def _acquire(
    gate: asyncio.Semaphore, pool: asyncpg.Pool, shares: "PoolShares | None", user_id: int | None
) -> asyncpg.Connection:
    if shares is not None:
        await shares.acquire(user_id)
    try:
        await gate.acquire()
        try:
            return await pool.acquire()
        except BaseException:
            gate.release()
            raise
    except BaseException:
        if shares is not None:
            shares.release(user_id)
        raise


class PoolShares:
    """How many of the pool's connections each user holds: at most DB_POOL_MAX_PER_USER at
    once. Without it, one user's 64 parallel searches held the whole pool and another user's
    list waited 715 ms behind them."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._gates: dict[int | None, asyncio.Semaphore] = {}
        self._requests: dict[int | None, int] = {}  # holding or waiting, per user

    def busy(self, user_id: int | None) -> bool:
        gate = self._gates.get(user_id)
        return gate is not None and gate.locked()

    async def acquire(self, user_id: int | None) -> None:
        gate = self._gates.get(user_id)
        if gate is None:
            gate = self._gates[user_id] = asyncio.Semaphore(self.per_user)
        self._requests[user_id] = self._requests.get(user_id, 0) + 1
        try:
            await gate.acquire()
        except BaseException:
            self._leave(user_id)
            raise

    def release(self, user_id: int | None) -> None:
        self._gates[user_id].release()
        self._leave(user_id)

    def _leave(self, user_id: int | None) -> None:
        left = self._requests[user_id] - 1
        if left:
            self._requests[user_id] = left
        else:  # nobody of this user holds or waits: forget them, to keep memory bounded
            del self._requests[user_id], self._gates[user_id]


async def pg_pool(app: web.Application) -> AsyncIterator[None]:
    """Open the pool at start-up and close it at shutdown.

    A database that is down at start-up does not stop the service: requests answer 503 and
    /readyz reports it until the pool can connect again.
    """
    settings = app[SETTINGS]
    log.info("connecting to PostgreSQL", extra={"database": hide_password(settings.database_url)})
    options = {
        "dsn": settings.database_url,
        "max_size": settings.db_pool_max_size,
        "timeout": settings.db_acquire_timeout,  # to connect
        "command_timeout": settings.db_command_timeout,
    }
    # Release a connection without asyncpg's reset query (RESET ALL, UNLISTEN *, CLOSE ALL,
    # pg_advisory_unlock_all): nothing here keeps session state (settings are SET LOCAL), and
    # that query is a round trip and about a third of the database's work on reads.
    # asyncpg still rolls back any transaction left open.
    options["reset"] = _keep_session
    if settings.db_pgbouncer:
        # PgBouncer in transaction mode may hand each transaction another server connection,
        # where a statement asyncpg prepared earlier does not exist. It also refuses unknown
        # startup parameters, so statement_timeout has to be set on the role there.
        options["statement_cache_size"] = 0
    else:
        # One slow query cannot hold a connection (and a request) for long.
        options["server_settings"] = {"statement_timeout": str(int(settings.db_statement_timeout * 1000))}
    try:
        pool = await asyncpg.create_pool(min_size=settings.db_pool_min_size, **options)
        await pool.fetchval("SELECT 1")
    except _CONNECT_ERRORS as error:
        log.warning("PostgreSQL is unreachable at start-up: %s", type(error).__name__)
        pool = await asyncpg.create_pool(min_size=0, **options)
    app[PG_POOL] = pool
    try:
        yield
    finally:
        await asyncio.wait_for(pool.close(), timeout=settings.db_command_timeout)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset step: nothing to undo."""


@contextmanager
def _migrations_locked(database_url: str) -> Iterator[tuple[DatabaseBackend, MigrationList]]:
    # yoyo is synchronous; it talks to PostgreSQL through psycopg 3.
    backend = get_backend("postgresql+psycopg://" + database_url.split("://", 1)[1])
    try:
        with backend.lock(timeout=60):
            yield backend, read_migrations(str(MIGRATIONS_DIR))
    finally:
        backend.connection.close()


def migrate(database_url: str, count: int | None = None) -> list[str]:
    """Apply the next `count` pending migrations (all when None) under yoyo's lock.

    Returns the ids applied. Blocking: call it before the event loop starts. Two instances
    starting together are safe: the second waits for the lock, then finds nothing to apply.
    """
    with _migrations_locked(database_url) as (backend, migrations):
        pending = backend.to_apply(migrations)[:count]
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]


def rollback(database_url: str, count: int | None = None) -> list[str]:
    """Roll back the newest `count` applied migrations (all when None); returns their ids."""
    with _migrations_locked(database_url) as (backend, migrations):
        applied = backend.to_rollback(migrations)[:count]
        backend.rollback_migrations(applied)
    return [migration.id for migration in applied]


# The schema's head, which /readyz compares with what the database has applied.
HEAD_MIGRATIONS = frozenset(migration.id for migration in read_migrations(str(MIGRATIONS_DIR)))
