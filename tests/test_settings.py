"""Configuration: read from the environment once; a bad value stops start-up with one clear line."""

import os
import subprocess
import sys

import pytest

from service.db import PROJECT_DIR
from service.settings import Settings, SettingsError

SECRET = "s" * 32
BASE = {"DATABASE_URL": "postgresql://app@db:5432/tasks", "JWT_SECRET": SECRET}
PROVIDER = {
    "AUTH_JWKS_URL": "https://app.example.com/api/auth/jwks",
    "AUTH_ISSUER": "https://app.example.com",
    "AUTH_AUDIENCE": "https://app.example.com",
}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.port == 8080
    assert settings.jwt_secret == SECRET
    assert settings.migrate_on_start is True
    assert SECRET not in repr(settings)


def test_better_auth_secret_is_the_fallback_name() -> None:
    settings = Settings.from_env({"DATABASE_URL": BASE["DATABASE_URL"], "BETTER_AUTH_SECRET": "b" * 40})
    assert settings.jwt_secret == "b" * 40


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"JWT_SECRET": ""}, "JWT_SECRET"),
        ({"JWT_SECRET": "s" * 31}, "JWT_SECRET"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"DB_POOL_MIN_SIZE": "20", "DB_POOL_MAX_SIZE": "5"}, "DB_POOL_MIN_SIZE"),
        ({"DB_ACQUIRE_TIMEOUT": "-1"}, "DB_ACQUIRE_TIMEOUT"),
        ({"CORS_ORIGINS": "app.example.com"}, "CORS_ORIGINS"),
        ({"RATE_LIMIT_WRITES": "-5"}, "RATE_LIMIT_WRITES"),
        ({"JWT_TTL_SECONDS": "10"}, "JWT_TTL_SECONDS"),
        ({"MIGRATE_ON_START": "maybe"}, "MIGRATE_ON_START"),
        ({"PUBLIC_URL": "tasks.example.com"}, "PUBLIC_URL"),
        ({"HTTP_HEADER_TIMEOUT": "0"}, "HTTP_HEADER_TIMEOUT"),
        ({"HTTP_BODY_TIMEOUT": "soon"}, "HTTP_BODY_TIMEOUT"),
        ({"HTTP_KEEPALIVE_TIMEOUT": "-1"}, "HTTP_KEEPALIVE_TIMEOUT"),
        ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
        ({"SHUTDOWN_DRAIN_SECONDS": "-1"}, "SHUTDOWN_DRAIN_SECONDS"),
        ({"METRICS_PUBLIC": "maybe"}, "METRICS_PUBLIC"),
        ({"PUBLIC_URL": "https://tasks.example.com/?x=1"}, "PUBLIC_URL"),
        ({"AUTH_JWKS_URL": "https://app.example.com/api/auth/jwks"}, "AUTH_ISSUER, AUTH_AUDIENCE is not set"),
        ({"AUTH_ISSUER": "https://app.example.com"}, "AUTH_JWKS_URL, AUTH_AUDIENCE is not set"),
        ({**PROVIDER, "AUTH_JWKS_URL": "app.example.com/jwks"}, "AUTH_JWKS_URL must be"),
        ({**PROVIDER, "AUTH_ALGORITHMS": "EdDSA,HS256"}, "AUTH_ALGORITHMS"),
        ({**PROVIDER, "AUTH_ALGORITHMS": "none"}, "AUTH_ALGORITHMS"),
        ({"WEBHOOK_RETRY_SCHEDULE": "5,soon"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": "5,,10"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": "0"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": "nan"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": "90000"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_DISABLE_AFTER": "0"}, "WEBHOOK_DISABLE_AFTER"),
        ({"WEBHOOK_RETENTION_DAYS": "0"}, "WEBHOOK_RETENTION_DAYS"),
        ({"WEBHOOK_ALLOW_PRIVATE": "sometimes"}, "WEBHOOK_ALLOW_PRIVATE"),
        ({"WEBHOOK_POLL_SECONDS": "0"}, "WEBHOOK_POLL_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(change: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**BASE, **change})


def test_webhook_settings() -> None:
    settings = Settings.from_env(BASE)
    assert settings.webhook_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert (settings.webhook_disable_after, settings.webhook_retention_days) == (432000, 7)
    assert settings.webhook_allow_private is False
    shrunk = Settings.from_env({**BASE, "WEBHOOK_RETRY_SCHEDULE": " 1, 1,2 ", "WEBHOOK_ALLOW_PRIVATE": "1"})
    assert shrunk.webhook_retry_schedule == (1, 1, 2)
    assert shrunk.webhook_allow_private is True


def test_an_identity_provider_is_configured_by_three_settings_together() -> None:
    assert Settings.from_env(BASE).auth_jwks_url == ""
    settings = Settings.from_env({**BASE, **PROVIDER})
    assert (settings.auth_jwks_url, settings.auth_issuer, settings.auth_audience) == tuple(PROVIDER.values())
    assert settings.auth_algorithms == ("EdDSA", "ES256", "RS256")
    chosen = Settings.from_env({**BASE, **PROVIDER, "AUTH_ALGORITHMS": " PS256, EdDSA "})
    assert chosen.auth_algorithms == ("PS256", "EdDSA")


@pytest.mark.parametrize(("raw", "value"), [("0", False), ("false", False), ("1", True), ("YES", True)])
def test_migrate_on_start_flag(raw: str, value: bool) -> None:
    assert Settings.from_env({**BASE, "MIGRATE_ON_START": raw}).migrate_on_start is value


def test_serve_with_a_short_secret_exits_with_one_line() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("JWT_SECRET", "BETTER_AUTH_SECRET")}
    env.update(DATABASE_URL=BASE["DATABASE_URL"], JWT_SECRET="too-short")
    result = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [sys.executable, "-m", "service", "serve"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: JWT_SECRET must be at least 32 bytes long"]
    assert "too-short" not in result.stderr


def test_token_command_mints_a_token_for_the_configured_secret() -> None:
    from service.auth import read_token

    env = {**os.environ, "JWT_SECRET": SECRET}
    result = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [sys.executable, "-m", "service", "token", "--user-id", "42", "--ttl", "120"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_token(result.stdout.strip(), Settings.from_env(BASE)).user_id == 42
