"""create_app(settings): wires middleware, resources and routes together, and nothing else."""

import asyncio

from aiohttp import web

from service.auth import auth_middleware, dummy_password_hash
from service.cors import add_cors_headers, cors_middleware
from service.db import pg_pool
from service.errors import error_middleware
from service.keys import LOGIN_LIMITER, PG_GATE, SETTINGS, WRITE_LIMITER
from service.limits import RateLimiter, rate_limit_middleware
from service.logs import AccessLogger, add_request_id, request_id_middleware
from service.metrics import metrics_middleware, pool_metrics
from service.routes import setup_routes
from service.settings import Settings

MAX_HEADER_FIELD_BYTES = 16 * 1024


def create_app(settings: Settings) -> web.Application:
    # Outermost first: every request is measured; browsers may read every answer; every answer,
    # errors included, carries a request id; errors become problem+json; then the caller is
    # authenticated, and only then counted against their rate limit.
    app = web.Application(
        middlewares=[
            metrics_middleware,
            cors_middleware,
            request_id_middleware,
            error_middleware,
            auth_middleware,
            rate_limit_middleware,
        ],
        client_max_size=settings.max_body_bytes,
        # aiohttp's default 8 KiB header field limit would answer an oversized token with a
        # plain-text 400 before any middleware runs; let it reach the token check instead.
        handler_args={"max_field_size": MAX_HEADER_FIELD_BYTES, "access_log_class": AccessLogger},
    )
    app[SETTINGS] = settings
    app[PG_GATE] = asyncio.Semaphore(settings.db_pool_max_size)
    app[WRITE_LIMITER] = RateLimiter(settings.rate_limit_writes)
    app[LOGIN_LIMITER] = RateLimiter(settings.rate_limit_logins)
    # Headers every answer carries, streamed ones included, added as it is sent.
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(pg_pool)
    app.cleanup_ctx.append(pool_metrics)
    app.cleanup_ctx.append(dummy_password_hash)
    setup_routes(app)
    return app
