"""create_app(settings): wires middleware, resources and routes together, and nothing else."""

import asyncio

from aiohttp import web

from service.api_tokens import ApiTokens, api_token_uses
from service.auth import PasswordHashing, auth_middleware, dummy_password_hash
from service.changefeed import ChangeWaiters
from service.connections import handler_args
from service.cors import add_cors_headers, cors_middleware
from service.db import PoolShares, pg_pool
from service.errors import error_middleware
from service.headers import answer_headers, header_bytes_middleware
from service.identity import IdentityProvider, provider_keys
from service.jobs import chores
from service.keys import (
    ACCOUNT_LIMITER,
    ADDRESS_LIMITER,
    API_TOKENS,
    CHANGE_WAITERS,
    DRAINING,
    IDENTITY_PROVIDER,
    LISTENER,
    LOGIN_LIMITER,
    METRICS_PAGE,
    PASSWORD_HASHING,
    PG_GATE,
    POOL_SHARES,
    REVOCATIONS,
    SETTINGS,
    WEBHOOK_WAKE,
    WRITE_LIMITER,
)
from service.limits import RateLimiter, rate_limit_middleware
from service.listener import Listener, listener
from service.logs import add_request_id, request_id_middleware
from service.metrics import MetricsPage, metrics_middleware, pool_metrics
from service.revocations import Revocations
from service.routes import setup_routes
from service.settings import Settings
from service.webhooks import webhook_jobs


def create_app(settings: Settings) -> web.Application:
    # Outermost first: every request is measured; browsers may read every answer; every answer,
    # errors included, carries a request id; errors become problem+json; header bytes that are
    # not UTF-8 are refused before anything reads them; then the caller is authenticated, and
    # only then counted against their rate limit.
    app = web.Application(
        middlewares=[
            metrics_middleware,
            cors_middleware,
            request_id_middleware,
            error_middleware,
            header_bytes_middleware,
            auth_middleware,
            rate_limit_middleware,
        ],
        client_max_size=settings.max_body_bytes,
        handler_args=handler_args(settings),
    )
    app[SETTINGS] = settings
    app[PG_GATE] = asyncio.Semaphore(settings.db_pool_max_size)
    app[POOL_SHARES] = PoolShares(settings.db_pool_per_user)
    app[WRITE_LIMITER] = RateLimiter(settings.rate_limit_writes)
    app[ADDRESS_LIMITER] = RateLimiter(settings.rate_limit_auth_per_address)
    app[LOGIN_LIMITER] = RateLimiter(settings.rate_limit_logins)
    app[ACCOUNT_LIMITER] = RateLimiter(settings.rate_limit_logins_per_account)
    app[PASSWORD_HASHING] = PasswordHashing(settings.password_hash_concurrency, settings.password_hash_queue)
    app[LISTENER] = Listener(settings.listen_url, settings.db_acquire_timeout)
    app[REVOCATIONS] = Revocations()
    app[REVOCATIONS].subscribe(app[LISTENER])
    app[METRICS_PAGE] = MetricsPage()
    app[CHANGE_WAITERS] = ChangeWaiters()
    app[CHANGE_WAITERS].subscribe(app[LISTENER])
    # Headers every answer carries, streamed ones included, added as it is sent.
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_cors_headers)
    app[IDENTITY_PROVIDER] = IdentityProvider(settings) if settings.auth_jwks_url else None
    app[API_TOKENS] = ApiTokens()
    app[DRAINING] = asyncio.Event()
    app[WEBHOOK_WAKE] = asyncio.Event()
    app.cleanup_ctx.append(pg_pool)
    app.cleanup_ctx.append(listener)
    app.cleanup_ctx.append(chores)
    app.cleanup_ctx.append(webhook_jobs)
    app.cleanup_ctx.append(pool_metrics)
    app.cleanup_ctx.append(dummy_password_hash)
    app.on_response_prepare.append(answer_headers)
    app.cleanup_ctx.append(provider_keys)
    app.cleanup_ctx.append(api_token_uses)
    setup_routes(app)
    return app
