"""create_app(settings): wires middleware, resources and routes together, and nothing else."""

from aiohttp import web

from service.auth import auth_middleware, dummy_password_hash
from service.db import pg_pool
from service.errors import error_middleware
from service.keys import SETTINGS
from service.logs import AccessLogger, request_id_middleware
from service.routes import setup_routes
from service.settings import Settings

MAX_HEADER_FIELD_BYTES = 16 * 1024


def create_app(settings: Settings) -> web.Application:
    # Outermost first: every answer, errors included, carries a request id; errors become
    # problem+json; only then is the caller authenticated.
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
        # aiohttp's default 8 KiB header field limit would answer an oversized token with a
        # plain-text 400 before any middleware runs; let it reach the token check instead.
        handler_args={"max_field_size": MAX_HEADER_FIELD_BYTES, "access_log_class": AccessLogger},
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(pg_pool)
    app.cleanup_ctx.append(dummy_password_hash)
    setup_routes(app)
    return app
