"""Every setting the service reads from the environment: read once, validated, with defaults."""

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, TypeVar

T = TypeVar("T")

MIN_SECRET_BYTES = 32
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What an identity provider may sign with: public-key algorithms only, so that no token signed
# with a shared secret (or with a provider's public key used as one) passes as the provider's.
ASYMMETRIC_ALGORITHMS = (
    "EdDSA",
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
)


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it and is safe to print."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str
    jwt_secret: str = dataclasses.field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    log_format: str = "json"
    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    db_pool_max_per_user: int = 0
    db_acquire_timeout: float = 5.0
    db_statement_timeout: float = 10.0
    db_pgbouncer: bool = False
    db_listen_url: str = ""
    jwt_issuer: str = "task-api"
    jwt_require_issuer: bool = False
    jwt_ttl_seconds: int = 900
    jwt_leeway_seconds: int = 10
    refresh_ttl_seconds: int = 30 * 86400
    refresh_reuse_grace_seconds: int = 5
    max_body_bytes: int = 64 * 1024
    migrate_on_start: bool = True
    shutdown_timeout: float = 30.0
    shutdown_drain_seconds: int = 5
    metrics_token: str = dataclasses.field(default="", repr=False)
    metrics_public: bool = False
    cors_origins: tuple[str, ...] = ()
    max_tasks_per_user: int = 100_000
    trash_retention_days: int = 30
    changes_retention_days: int = 30
    idempotency_ttl_seconds: int = 86_400
    rate_limit_writes: int = 600
    rate_limit_logins: int = 10
    rate_limit_logins_per_account: int = 100
    rate_limit_auth_per_address: int = 30
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    password_hash_concurrency: int = 1
    password_hash_queue: int = 8
    public_url: str = ""
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 75.0
    max_connections: int = 1000
    stream_write_timeout: float = 10.0
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_disable_after: int = 5 * 86400
    webhook_retention_days: int = 7
    webhook_allow_private: bool = False
    webhook_poll_seconds: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables, naming the first bad one on error."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        secret = jwt_secret_from_env(env)
        database_url = reader.text("DATABASE_URL", default="")
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("DATABASE_URL must be set to a postgresql:// URL")
        pool_min = reader.integer("DB_POOL_MIN_SIZE", cls.db_pool_min_size, minimum=0)
        pool_max = reader.integer("DB_POOL_MAX_SIZE", cls.db_pool_max_size, minimum=1)
        if pool_min > pool_max:
            raise SettingsError("DB_POOL_MIN_SIZE must not be larger than DB_POOL_MAX_SIZE")
        pgbouncer = reader.boolean("DB_PGBOUNCER", cls.db_pgbouncer)
        listen_url = reader.text("DB_LISTEN_URL", "")
        if listen_url and not listen_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("DB_LISTEN_URL must be a postgresql:// URL")
        if pgbouncer and not listen_url:
            raise SettingsError(
                "DB_PGBOUNCER=1 needs DB_LISTEN_URL: LISTEN does not work through transaction pooling,"
                " so point it at PostgreSQL itself (or a session-mode pool)"
            )
        provider = _identity_provider(reader)
        return cls(
            database_url=database_url,
            jwt_secret=secret,
            host=reader.text("HOST", cls.host),
            port=reader.integer("PORT", cls.port, minimum=1, maximum=65535),
            log_level=reader.choice("LOG_LEVEL", cls.log_level, LOG_LEVELS),
            log_format=reader.choice("LOG_FORMAT", cls.log_format, ("json", "text")),
            db_pool_min_size=pool_min,
            db_pool_max_size=pool_max,
            db_pool_max_per_user=reader.integer("DB_POOL_MAX_PER_USER", cls.db_pool_max_per_user, minimum=0),
            db_acquire_timeout=reader.number("DB_ACQUIRE_TIMEOUT", cls.db_acquire_timeout),
            db_statement_timeout=reader.number("DB_STATEMENT_TIMEOUT", cls.db_statement_timeout),
            db_pgbouncer=pgbouncer,
            db_listen_url=listen_url,
            jwt_issuer=jwt_issuer_from_env(env),
            jwt_require_issuer=reader.boolean("JWT_REQUIRE_ISSUER", cls.jwt_require_issuer),
            jwt_ttl_seconds=reader.integer("JWT_TTL_SECONDS", cls.jwt_ttl_seconds, minimum=60),
            jwt_leeway_seconds=reader.integer(
                "JWT_LEEWAY_SECONDS", cls.jwt_leeway_seconds, minimum=0, maximum=300
            ),
            refresh_ttl_seconds=reader.integer(
                "REFRESH_TTL_SECONDS", cls.refresh_ttl_seconds, minimum=300, maximum=366 * 86400
            ),
            refresh_reuse_grace_seconds=reader.integer(
                "REFRESH_REUSE_GRACE_SECONDS", cls.refresh_reuse_grace_seconds, minimum=0, maximum=60
            ),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            migrate_on_start=reader.boolean("MIGRATE_ON_START", cls.migrate_on_start),
            shutdown_timeout=reader.number("SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            shutdown_drain_seconds=reader.integer(
                "SHUTDOWN_DRAIN_SECONDS", cls.shutdown_drain_seconds, minimum=0, maximum=300
            ),
            metrics_token=reader.text("METRICS_TOKEN", ""),
            metrics_public=reader.boolean("METRICS_PUBLIC", cls.metrics_public),
            cors_origins=reader.origins("CORS_ORIGINS"),
            max_tasks_per_user=reader.integer("MAX_TASKS_PER_USER", cls.max_tasks_per_user, minimum=1),
            trash_retention_days=reader.integer(
                "TRASH_RETENTION_DAYS", cls.trash_retention_days, minimum=1, maximum=3650
            ),
            changes_retention_days=reader.integer(
                "CHANGES_RETENTION_DAYS", cls.changes_retention_days, minimum=1, maximum=3650
            ),
            idempotency_ttl_seconds=reader.integer(
                "IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, minimum=60, maximum=30 * 86400
            ),
            rate_limit_writes=reader.integer("RATE_LIMIT_WRITES", cls.rate_limit_writes, minimum=0),
            rate_limit_logins=reader.integer("RATE_LIMIT_LOGINS", cls.rate_limit_logins, minimum=0),
            rate_limit_logins_per_account=reader.integer(
                "RATE_LIMIT_LOGINS_PER_ACCOUNT", cls.rate_limit_logins_per_account, minimum=0
            ),
            rate_limit_auth_per_address=reader.integer(
                "RATE_LIMIT_AUTH_PER_ADDRESS", cls.rate_limit_auth_per_address, minimum=0
            ),
            trusted_proxies=reader.networks("TRUSTED_PROXIES"),
            password_hash_concurrency=reader.integer(
                "PASSWORD_HASH_CONCURRENCY", cls.password_hash_concurrency, minimum=1, maximum=64
            ),
            password_hash_queue=reader.integer(
                "PASSWORD_HASH_QUEUE", cls.password_hash_queue, minimum=0, maximum=10_000
            ),
            public_url=reader.public_url("PUBLIC_URL"),
            http_header_timeout=reader.number("HTTP_HEADER_TIMEOUT", cls.http_header_timeout),
            http_body_timeout=reader.number("HTTP_BODY_TIMEOUT", cls.http_body_timeout),
            http_keepalive_timeout=reader.number("HTTP_KEEPALIVE_TIMEOUT", cls.http_keepalive_timeout),
            max_connections=reader.integer("MAX_CONNECTIONS", cls.max_connections, minimum=1),
            stream_write_timeout=reader.number("STREAM_WRITE_TIMEOUT", cls.stream_write_timeout),
            webhook_retry_schedule=reader.delays("WEBHOOK_RETRY_SCHEDULE", cls.webhook_retry_schedule),
            webhook_disable_after=reader.integer(
                "WEBHOOK_DISABLE_AFTER", cls.webhook_disable_after, minimum=1, maximum=365 * 86400
            ),
            webhook_retention_days=reader.integer(
                "WEBHOOK_RETENTION_DAYS", cls.webhook_retention_days, minimum=1, maximum=3650
            ),
            webhook_allow_private=reader.boolean("WEBHOOK_ALLOW_PRIVATE", cls.webhook_allow_private),
            webhook_poll_seconds=reader.number("WEBHOOK_POLL_SECONDS", cls.webhook_poll_seconds),
            **provider,
        )

    @property
    def db_pool_per_user(self) -> int:
        """Connections one user may hold at once: DB_POOL_MAX_PER_USER, or else a third of the
        pool (at least one)."""
        return self.db_pool_max_per_user or max(1, self.db_pool_max_size // 3)

    @property
    def listen_url(self) -> str:
        """Where the worker's LISTEN connection goes: DB_LISTEN_URL, else DATABASE_URL."""
        return self.db_listen_url or self.database_url

    @property
    def db_command_timeout(self) -> float:
        """The client's own limit on a query: a little past the server's statement_timeout, for
        when the server cannot even answer (a network cut)."""
        return self.db_statement_timeout + 5.0

    @property
    def log_level_number(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]


def _identity_provider(reader: "_Reader") -> dict[str, Any]:
    """AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE (all three or none) and AUTH_ALGORITHMS."""
    names = ("AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE")
    url, issuer, audience = (reader.text(name, "") for name in names)
    if any((url, issuer, audience)) and not all((url, issuer, audience)):
        missing = ", ".join(
            name for name, value in zip(names, (url, issuer, audience), strict=True) if not value
        )
        raise SettingsError(f"AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE go together; {missing} is not set")
    if url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise SettingsError(f"AUTH_JWKS_URL must be an https:// URL, got {url!r}")
    algorithms = tuple(part.strip() for part in reader.text("AUTH_ALGORITHMS", "").split(",") if part.strip())
    for algorithm in algorithms:
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise SettingsError(
                f"AUTH_ALGORITHMS must list public-key algorithms ({', '.join(ASYMMETRIC_ALGORITHMS)}),"
                f" got {algorithm!r}"
            )
    return {
        "auth_jwks_url": url,
        "auth_issuer": issuer,
        "auth_audience": audience,
        "auth_algorithms": algorithms or Settings.auth_algorithms,
    }


def jwt_secret_from_env(env: Mapping[str, str]) -> str:
    """JWT_SECRET, or BETTER_AUTH_SECRET (the original frontend's name); at least 32 bytes."""
    secret = env.get("JWT_SECRET", "").strip() or env.get("BETTER_AUTH_SECRET", "").strip()
    if not secret:
        raise SettingsError("JWT_SECRET is not set (BETTER_AUTH_SECRET is also read)")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def jwt_issuer_from_env(env: Mapping[str, str]) -> str:
    """JWT_ISSUER: the `iss` and `aud` of the tokens this service mints."""
    return env.get("JWT_ISSUER", "").strip() or Settings.jwt_issuer


class _Reader:
    """Parses one environment mapping; every error names the variable it is about."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, "").strip() or default

    def _parse(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except (ValueError, KeyError):
            raise SettingsError(f"{name} must be {expected}, got {raw!r}") from None

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self._parse(name, default, int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise SettingsError(f"{name} must be {bounds}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self._parse(name, default, float, "a number of seconds")
        if not 0 < value < 3600:
            raise SettingsError(f"{name} must be more than 0 and less than 3600 seconds, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        normalised = value.upper() if choices == LOG_LEVELS else value.lower()
        if normalised not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return normalised

    def origins(self, name: str) -> tuple[str, ...]:
        """Comma-separated browser origins such as https://app.example.com, or *."""
        origins = tuple(part.strip().rstrip("/") for part in self.text(name, "").split(",") if part.strip())
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise SettingsError(f"{name} must list origins like https://app.example.com, got {origin!r}")
        return origins

    def networks(self, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        """Comma-separated addresses or CIDR blocks, such as 10.0.0.0/8, ::1."""
        try:
            return tuple(ip_network(part.strip()) for part in self.text(name, "").split(",") if part.strip())
        except ValueError as error:
            raise SettingsError(f"{name} must list addresses or CIDR blocks: {error}") from None

    def public_url(self, name: str) -> str:
        """An http(s) URL with no query, kept without its trailing slash; empty when unset."""
        url = self.text(name, "").rstrip("/")
        if url and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
            raise SettingsError(f"{name} must be an http:// or https:// URL without a query, got {url!r}")
        return url

    def delays(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        """Comma-separated delays in seconds, such as 5,300,1800: at least one, each above 0 and
        at most a day."""
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            delays = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise SettingsError(f"{name} must be comma-separated numbers of seconds, got {raw!r}") from None
        if not all(0 < delay <= 86400 for delay in delays):
            raise SettingsError(f"{name} must list delays above 0 and at most 86400 seconds, got {raw!r}")
        return delays

    def boolean(self, name: str, default: bool) -> bool:
        flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        return self._parse(name, default, lambda raw: flags[raw.lower()], "one of 1, 0, true, false")
