"""Accounts and tokens: register, log in, me, and every way a token can be wrong."""

import asyncio
import base64
import hashlib
import hmac
import time

import jwt
import orjson
import pytest

from service.auth import read_token
from service.settings import Settings
from tests.conftest import PASSWORD, TEST_SECRET, ApiClient, User

REGISTRATION = {"email": "Ada@Example.com", "password": "analytical engine", "name": "Ada"}


async def test_register_returns_the_user_and_a_working_token(api: ApiClient) -> None:
    answer = await api.post("/api/auth/register", json=REGISTRATION)
    assert answer.status == 201
    grant = answer.json
    assert grant["token_type"] == "bearer"
    assert grant["expires_in"] == 900
    assert grant["token"] == grant["access_token"]
    assert grant["user"]["email"] == "Ada@Example.com"
    assert grant["user"]["name"] == "Ada"
    assert "password" not in answer.body.decode() and "hash" not in answer.body.decode()
    assert answer.headers["Cache-Control"] == "no-store"
    me = await api.get("/api/auth/me", token=grant["access_token"])
    assert me.status == 200
    assert me.json == grant["user"]
    tasks = await api.get(f"/api/{grant['user']['id']}/tasks", token=grant["access_token"])
    assert tasks.status == 200


async def test_the_password_is_stored_as_an_argon2id_hash(api: ApiClient, db) -> None:
    await api.post("/api/auth/register", json=REGISTRATION)
    stored = await db.fetchval("SELECT password_hash FROM users WHERE email = $1", REGISTRATION["email"])
    assert stored.startswith("$argon2id$")
    assert REGISTRATION["password"] not in stored


async def test_a_taken_email_in_any_case_is_a_conflict(api: ApiClient) -> None:
    assert (await api.post("/api/auth/register", json=REGISTRATION)).status == 201
    again = await api.post("/api/auth/register", json={**REGISTRATION, "email": "ada@EXAMPLE.com"})
    assert again.status == 409
    assert again.content_type == "application/problem+json"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 257}, "password"),
        ({"name": "  "}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"role": "admin"}, "role"),
    ],
)
async def test_register_validates_every_field(api: ApiClient, change: dict, field: str) -> None:
    answer = await api.post("/api/auth/register", json={**REGISTRATION, **change})
    assert answer.status == 400
    assert field in answer.json["errors"]


async def test_login_in_any_email_case_returns_a_token(api: ApiClient, alice: User) -> None:
    answer = await api.post("/api/auth/login", json={"email": alice.email.upper(), "password": PASSWORD})
    assert answer.status == 200
    assert answer.json["user"]["id"] == alice.id
    assert (
        read_token(
            answer.json["access_token"], Settings(database_url="postgresql://", jwt_secret=TEST_SECRET)
        ).user_id
        == alice.id
    )


async def test_wrong_password_and_unknown_email_answer_identically(api: ApiClient, alice: User) -> None:
    wrong = await api.post("/api/auth/login", json={"email": alice.email, "password": "not it at all"})
    unknown = await api.post("/api/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status == unknown.status == 401
    assert {k: v for k, v in wrong.json.items() if k != "request_id"} == {
        k: v for k, v in unknown.json.items() if k != "request_id"
    }
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]


async def test_me_needs_a_token(api: ApiClient) -> None:
    answer = await api.get("/api/auth/me")
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks"'


async def test_a_deleted_users_token_is_refused(api: ApiClient, alice: User, db) -> None:
    await db.execute("DELETE FROM users WHERE id = $1", alice.id)
    assert (await api.get("/api/auth/me", token=alice.token)).status == 401
    created = await api.post(alice.tasks, token=alice.token, json={"title": "orphan"})
    assert created.status == 401


async def test_deleting_a_user_deletes_their_tasks(api: ApiClient, alice: User, db) -> None:
    await api.post(alice.tasks, token=alice.token, json={"title": "t"})
    await db.execute("DELETE FROM users WHERE id = $1", alice.id)
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", alice.id) == 0


def _claims(user: User, **changes: object) -> dict:
    now = int(time.time())
    claims = {"sub": str(user.id), "iat": now, "exp": now + 600, **changes}
    return {key: value for key, value in claims.items() if value is not None}


def _forged(alg: str, claims: dict, hmac_key: str | None = None) -> str:
    """A token with any `alg` in its header, HMAC-SHA256-signed with `hmac_key` or unsigned."""

    def encode(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = f"{encode(orjson.dumps({'alg': alg, 'typ': 'JWT'}))}.{encode(orjson.dumps(claims))}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{encode(signature)}"


def _bad_tokens(user: User) -> dict[str, str]:
    now = int(time.time())
    sign = lambda claims, key=TEST_SECRET, alg="HS256": jwt.encode(claims, key, algorithm=alg)  # noqa: E731
    return {
        "garbage": "not.a.token",
        "empty parts": "..",
        "wrong secret": sign(_claims(user), key="another-secret-that-is-also-32-bytes-long!"),
        "expired": sign(_claims(user, iat=now - 7200, exp=now - 3600)),
        "not yet valid": sign(_claims(user, nbf=now + 3600)),
        "issued in the future": sign(_claims(user, iat=now + 3600)),
        "no exp": sign(_claims(user, exp=None)),
        "no sub": sign(_claims(user, sub=None)),
        "no iat": sign(_claims(user, iat=None)),
        "integer sub": sign(_claims(user, sub=user.id)),
        "non-numeric sub": sign(_claims(user, sub="alice")),
        "zero-padded sub": sign(_claims(user, sub=f"0{user.id}")),
        "sub beyond bigint": sign(_claims(user, sub="9" * 30)),
        "alg none": _forged("none", _claims(user)),
        "HS512 with the right secret": sign(_claims(user), alg="HS512"),
        "RS256 header on an HMAC signature": _forged("RS256", _claims(user), TEST_SECRET),
        "8 KB token": sign(_claims(user, padding="x" * 8192)),
        "another issuer": sign(_claims(user, iss="billing-service", aud="task-api")),
        "another audience": sign(_claims(user, iss="task-api", aud="billing-service")),
        "an audience list without us": sign(_claims(user, aud=["billing", "reports"])),
        "a session id that is not one": sign(_claims(user, sid="../../etc")),
    }


@pytest.mark.parametrize("case", list(_bad_tokens(User(1, "x@example.com", "")).keys()))
async def test_bad_tokens_are_401_invalid_token(api: ApiClient, alice: User, case: str) -> None:
    token = _bad_tokens(alice)[case]
    answer = await api.get(alice.tasks, token=token)
    assert answer.status == 401, case
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks", error="invalid_token"'
    assert answer.content_type == "application/problem+json"


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc"])
async def test_missing_or_non_bearer_credentials_are_401(api: ApiClient, alice: User, header: str) -> None:
    answer = await api.get(alice.tasks, headers={"Authorization": header} if header else {})
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_within_the_leeway_is_accepted(api: ApiClient, alice: User) -> None:
    now = int(time.time())
    token = jwt.encode(_claims(alice, iat=now - 605, exp=now - 5), TEST_SECRET, algorithm="HS256")
    assert (await api.get(alice.tasks, token=token)).status == 200


async def test_the_bearer_scheme_is_case_insensitive(api: ApiClient, alice: User) -> None:
    answer = await api.get(alice.tasks, headers={"Authorization": f"bearer {alice.token}"})
    assert answer.status == 200


async def test_a_token_seen_before_is_refused_once_it_expires(api: ApiClient, alice: User) -> None:
    now = int(time.time())
    leeway = 10  # JWT_LEEWAY_SECONDS's default, which the test app uses
    token = jwt.encode(_claims(alice, iat=now - 60, exp=now - leeway + 1), TEST_SECRET, algorithm="HS256")
    assert (await api.get(alice.tasks, token=token)).status == 200  # verified, and remembered
    await asyncio.sleep(2.1)
    answer = await api.get(alice.tasks, token=token)
    assert answer.status == 401 and answer.json["detail"] == "The token has expired."


async def test_a_token_verified_under_one_secret_is_not_taken_under_another(
    aiohttp_client, make_app, alice: User
) -> None:
    first = ApiClient(await aiohttp_client(make_app()))
    assert (await first.get(alice.tasks, token=alice.token)).status == 200
    second = ApiClient(
        await aiohttp_client(make_app(jwt_secret="another-secret-of-enough-length-for-hs256!"))
    )
    assert (await second.get(alice.tasks, token=alice.token)).status == 401


async def test_our_tokens_name_this_service_as_issuer_and_audience(api: ApiClient, alice: User) -> None:
    grant = (await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})).json
    claims = jwt.decode(grant["access_token"], options={"verify_signature": False})
    assert claims["iss"] == claims["aud"] == "task-api"
    assert claims["sid"]
    minted = jwt.decode(alice.token, options={"verify_signature": False})
    assert minted["iss"] == minted["aud"] == "task-api"
    assert "sid" not in minted


async def test_an_audience_list_naming_us_is_accepted(api: ApiClient, alice: User) -> None:
    token = jwt.encode(_claims(alice, iss="task-api", aud=["reports", "task-api"]), TEST_SECRET)
    assert (await api.get(alice.tasks, token=token)).status == 200


async def test_tokens_without_issuer_are_accepted_unless_required(
    aiohttp_client, make_app, alice: User
) -> None:
    bare = jwt.encode(_claims(alice), TEST_SECRET, algorithm="HS256")  # as the original contract minted
    lenient = ApiClient(await aiohttp_client(make_app()))
    assert (await lenient.get(alice.tasks, token=bare)).status == 200
    strict = ApiClient(await aiohttp_client(make_app(jwt_require_issuer=True)))
    refused = await strict.get(alice.tasks, token=bare)
    assert refused.status == 401
    assert "issuer" in refused.json["detail"]
    assert (await strict.get(alice.tasks, token=alice.token)).status == 200


async def test_another_deployments_issuer_is_refused(aiohttp_client, make_app, alice: User) -> None:
    other = ApiClient(await aiohttp_client(make_app(jwt_issuer="task-api-staging")))
    answer = await other.get(alice.tasks, token=alice.token)
    assert answer.status == 401
    assert answer.json["detail"] == "The token was issued for another service."
