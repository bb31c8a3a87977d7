"""Command line: `python -m service serve | migrate | token | seed`, for operators and harnesses."""

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import psycopg
import yoyo.exceptions

from service.auth import mint_token
from service.db import PROJECT_DIR, hide_password, migrate
from service.devdb import EmbeddedPostgres, EmbeddedPostgresError
from service.logs import configure_logging
from service.seed import seed, write_tokens
from service.settings import Settings, SettingsError, jwt_issuer_from_env, jwt_secret_from_env
from service.workers import CannotListen, listening, serve

DEV_DIR = PROJECT_DIR / ".dev"
log = logging.getLogger("service")


def _dev_secret() -> str:
    """The development JWT secret, made once and kept in the git-ignored .dev/ folder."""
    path = DEV_DIR / "jwt_secret"
    if not path.exists():
        DEV_DIR.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _dev_environment(stack: ExitStack) -> tuple[dict[str, str], list[str]]:
    """The environment, with an embedded database and a development secret for what is unset."""
    env = dict(os.environ)
    notes = []
    if not env.get("DATABASE_URL"):
        server = EmbeddedPostgres(DEV_DIR / "postgres")
        env["DATABASE_URL"] = stack.enter_context(server)
        notes.append(
            f"development mode: DATABASE_URL is not set, so an embedded PostgreSQL serves "
            f"{env['DATABASE_URL']} from {server.data_dir} and stops with the service"
        )
    if not (env.get("METRICS_TOKEN") or env.get("METRICS_PUBLIC")):
        env["METRICS_PUBLIC"] = "1"
        notes.append("development mode: METRICS_TOKEN is not set, so /metrics is public")
    if not (env.get("JWT_SECRET") or env.get("BETTER_AUTH_SECRET")):
        env["JWT_SECRET"] = _dev_secret()
        notes.append(
            "development mode: JWT_SECRET is not set, so tokens are signed with the secret in "
            f"{DEV_DIR / 'jwt_secret'}"
        )
    return env, notes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    dev_help = "for what is unset, use an embedded PostgreSQL and a development secret (in .dev/)"
    serve = commands.add_parser("serve", help="migrate (unless MIGRATE_ON_START=0) and serve HTTP")
    serve.add_argument("--dev", action="store_true", help=dev_help)
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes sharing the port (default: one per core)",
    )
    migrate_command = commands.add_parser("migrate", help="apply pending migrations and exit")
    migrate_command.add_argument("--dev", action="store_true", help=dev_help)
    token = commands.add_parser(
        "token",
        help="print an access token signed with JWT_SECRET, for load tests: it belongs to no session,"
        " so logout cannot end it; it works until it expires",
    )
    token.add_argument("--user-id", type=int, required=True)
    token.add_argument("--ttl", type=int, default=None, help="seconds (default JWT_TTL_SECONDS)")
    token.add_argument(
        "--dev", action="store_true", help="sign with the development secret when JWT_SECRET is unset"
    )
    seed_command = commands.add_parser(
        "seed",
        help="add users and their tasks to DATABASE_URL through COPY (migrating first, unless"
        " MIGRATE_ON_START=0) and write a token for each, for load-testing harnesses",
    )
    seed_command.add_argument("--users", type=_positive, required=True, help="users to add")
    seed_command.add_argument(
        "--tasks-per-user", type=_positive_or_zero, required=True, help="tasks each of them gets"
    )
    seed_command.add_argument(
        "--tokens", type=Path, required=True, help="CSV file to write: a user_id,token line per user"
    )
    seed_command.add_argument(
        "--ttl", type=_positive, default=None, help="seconds the tokens last (default JWT_TTL_SECONDS)"
    )
    seed_command.add_argument("--dev", action="store_true", help=dev_help)
    return parser


def _positive(text: str) -> int:
    value = _positive_or_zero(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_or_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    """Users and tasks through COPY, then their tokens (no sessions, like `token`)."""
    folder = args.tokens.resolve().parent
    if not os.access(folder, os.W_OK):  # found out before seeding, not after
        log.error("cannot write the tokens file: %s is not a writable folder", folder)
        return 1
    try:
        (users,) = seed(settings.database_url, [(args.users, args.tasks_per_user)])
    except (OSError, asyncpg.PostgresError) as error:
        log.error(
            "cannot seed %s: %s", hide_password(settings.database_url), str(error) or type(error).__name__
        )
        return 1
    ttl = args.ttl if args.ttl is not None else settings.jwt_ttl_seconds
    write_tokens(args.tokens, users, settings.jwt_secret, ttl, issuer=settings.jwt_issuer)
    log.info(
        "seeded users and tasks; their tokens are in the CSV file",
        extra={"users": len(users), "tasks_per_user": args.tasks_per_user, "tokens": str(args.tokens)},
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    env: Mapping[str, str] = os.environ
    if args.dev and not (env.get("JWT_SECRET") or env.get("BETTER_AUTH_SECRET")):
        env = {**env, "JWT_SECRET": _dev_secret()}
    secret = jwt_secret_from_env(env)
    ttl = args.ttl if args.ttl is not None else Settings.jwt_ttl_seconds
    print(mint_token(args.user_id, secret, ttl, issuer=jwt_issuer_from_env(env)))
    return 0


def _migrate(settings: Settings) -> None:
    applied = migrate(settings.database_url)
    log.info("migrations applied" if applied else "schema is up to date", extra={"migrations": applied})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with ExitStack() as stack:
        try:
            if args.command == "token":
                return _token(args)
            env, notes = _dev_environment(stack) if args.dev else (dict(os.environ), [])
            settings = Settings.from_env(env)
        except (SettingsError, EmbeddedPostgresError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        configure_logging(settings.log_level_number, settings.log_format)
        for note in notes:
            log.warning(note)
        if args.command == "serve":
            try:  # before migrating: a second instance stops here, with one line
                sockets = stack.enter_context(listening(settings, max(1, args.workers)))
            except CannotListen as error:
                log.error(str(error))
                return 1
        try:
            if args.command == "migrate" or settings.migrate_on_start:
                _migrate(settings)
        except (psycopg.OperationalError, yoyo.exceptions.LockTimeout) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.error("cannot migrate %s: %s", hide_password(settings.database_url), reason)
            return 1
        if args.command == "seed":
            return _seed(args, settings)
        if args.command == "serve":
            log.info("serving", extra={"host": settings.host, "port": settings.port, "workers": args.workers})
            return serve(settings, sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
