"""The reference `make bench` measures the service against: a bare aiohttp + asyncpg + uvloop +
orjson app that checks an HS256 token on every request and runs the service's own list, get and
create SQL, and does nothing else (no logs, metrics, request ids, rate limits, validation,
middleware, If-Match, idempotency, or transaction around the write). The service's requests per
second over this app's, in the same run, on the same data, workers and pool, is what its
features cost.

    DATABASE_URL=… JWT_SECRET=… PORT=… DB_POOL_MAX_SIZE=… python -m bench.bare --workers 2

The SQL is read from the service at start, as the pgbench ceiling reads it (bench/pgbench.py),
so the two apps run the same statements. Answers are the rows as asyncpg returns them, in JSON.
"""

import argparse
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import orjson
import uvloop
from aiohttp import web

from bench.pgbench import create_statement, get_statement, list_statement

ISSUER = "task-api"  # the service's default JWT_ISSUER, which the kit's tokens name
PAGE_SIZE = 100
MAX_TASKS = 100_000  # the service's default MAX_TASKS_PER_USER
LISTEN_BACKLOG = 4096  # as the service's

POOL = web.AppKey("POOL", asyncpg.Pool)
SECRET = web.AppKey("SECRET", str)
STATEMENTS = web.AppKey("STATEMENTS", dict)


def _user_id(request: web.Request) -> int:
    """The path's user, if the bearer token is valid (401) and names it (403)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer":
        raise web.HTTPUnauthorized()
    try:
        claims = jwt.decode(
            token,
            request.app[SECRET],
            algorithms=["HS256"],
            audience=ISSUER,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.InvalidTokenError:
        raise web.HTTPUnauthorized() from None
    if claims["sub"] != request.match_info["user_id"]:
        raise web.HTTPForbidden()
    return int(claims["sub"])


async def _run(request: web.Request, name: str, method: str, **values: Any) -> Any:
    sql, names = request.app[STATEMENTS][name]
    async with request.app[POOL].acquire() as conn:
        return await getattr(conn, method)(sql, *(values.get(name) for name in names))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def list_tasks(request: web.Request) -> web.Response:
    rows = await _run(request, "list", "fetch", user_id=_user_id(request), limit=PAGE_SIZE)
    return _json([dict(row) for row in rows])


async def get_task(request: web.Request) -> web.Response:
    user_id, task_id = _user_id(request), int(request.match_info["task_id"])
    row = await _run(request, "get", "fetchrow", user_id=user_id, task_id=task_id)
    if row is None:
        raise web.HTTPNotFound()
    return _json(dict(row))


async def create_task(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    title = orjson.loads(await request.read())["title"]
    row = await _run(
        request, "create", "fetchrow",
        user_id=user_id, max_tasks=MAX_TASKS, title=title, completed=False, priority=1, tags=[],
    )  # fmt: skip
    return _json(dict(row), 201, {"Location": f"/api/{user_id}/tasks/{row['id']}"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[POOL].fetchval("SELECT 1")
    return _json({"status": "ok"})


async def _pool(app: web.Application) -> AsyncIterator[None]:
    size = int(os.environ.get("DB_POOL_MAX_SIZE", "10"))
    # The service's pool, as db.pg_pool makes it: no reset query on release.
    app[POOL] = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=size, max_size=size, reset=_keep_session,
        server_settings={"statement_timeout": "10000"},
    )  # fmt: skip
    yield
    await app[POOL].close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    pass


def make_app() -> web.Application:
    app = web.Application()
    app[SECRET] = os.environ["JWT_SECRET"]
    app[STATEMENTS] = {"list": list_statement(), "get": get_statement(), "create": create_statement()}
    app.cleanup_ctx.append(_pool)
    tasks = "/api/{user_id:[0-9]+}/tasks"
    app.router.add_get(tasks, list_tasks)
    app.router.add_post(tasks, create_task)
    app.router.add_get(tasks + "/{task_id:[0-9]+}", get_task)
    app.router.add_get("/readyz", readyz)
    return app


def _worker(host: str, port: int) -> None:
    # Each worker binds its own socket with SO_REUSEPORT, as the service's workers do.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    web.run_app(
        make_app(), sock=sock, backlog=LISTEN_BACKLOG, access_log=None, print=None,
        loop=uvloop.new_event_loop(),
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(host, port)) for _ in range(args.workers)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return 0 if all(worker.exitcode == 0 for worker in workers) else 1


if __name__ == "__main__":
    sys.exit(main())
