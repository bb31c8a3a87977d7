"""Tokens from an identity provider: a real JWKS served over HTTP by a test provider with Ed25519,
P-256 and RSA keys; rotation; every way a token can be wrong; the provider going down, with keys
cached and at start-up; `me` and `sub` in paths; just-in-time users that never collide with
another provider's nor merge with a password account."""

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import jwt
import orjson
import pytest

from service import identity
from service.keys import IDENTITY_PROVIDER
from tests.conftest import (
    ALGORITHMS,
    KEYS,
    PASSWORD,
    ApiClient,
    Provider,
    User,
    kid_of,
    provider_settings,
    running_service,
    subject,
    until,
)


def forged(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token with any header, HMAC-SHA256-signed with `hmac_key` or unsigned."""

    def encode(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = f"{encode(orjson.dumps(header))}.{encode(orjson.dumps(claims))}"
    signature = (
        b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{encode(signature)}"


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
async def test_a_token_signed_with_each_kind_of_key_signs_its_user_in(
    provider_api: ApiClient, provider: Provider, db: asyncpg.Connection, algorithm: str
) -> None:
    sub = subject()
    token = provider.token(sub, kid_of(provider, algorithm), name="Ada Lovelace")
    me = await provider_api.get("/api/auth/me", token=token)
    assert me.status == 200, me
    assert me.json["email"] == f"{sub[:20]}@example.com"
    assert me.json["name"] == "Ada Lovelace"
    user = await db.fetchrow("SELECT * FROM users WHERE id = $1", me.json["id"])
    assert (user["auth_issuer"], user["auth_subject"], user["password_hash"]) == (provider.issuer, sub, None)
    created = await provider_api.post(f"/api/{sub}/tasks", token=token, json={"title": "from the frontend"})
    assert created.status == 201
    assert created.json["user_id"] == me.json["id"]
    # Another token of the same subject (another key, later) is the same user.
    other_algorithm = next(name for name in ALGORITHMS if name != algorithm)
    again = provider.token(sub, kid_of(provider, other_algorithm), iat=int(time.time()) + 1)
    tasks = await provider_api.get("/api/me/tasks", token=again)
    assert [task["title"] for task in tasks.json] == ["from the frontend"]
    assert await db.fetchval("SELECT count(*) FROM users WHERE auth_subject = $1", sub) == 1


async def test_claims_that_cannot_be_kept_leave_email_and_name_empty(
    provider_api: ApiClient, provider: Provider
) -> None:
    token = provider.token(subject(), kid_of(provider, "EdDSA"), email="not an email", name=" \x00 ")
    me = await provider_api.get("/api/auth/me", token=token)
    assert me.status == 200
    assert (me.json["email"], me.json["name"]) == (None, None)
    bare = provider.token(subject(), kid_of(provider, "EdDSA"), email=None, name=None)
    assert (await provider_api.get("/api/auth/me", token=bare)).json["email"] is None


async def test_a_rotated_key_works_at_once_with_no_restart(
    provider_api: ApiClient, provider: Provider
) -> None:
    sub = subject()
    old_kid = kid_of(provider, "EdDSA")
    assert (await provider_api.get("/api/me/tasks", token=provider.token(sub, old_kid))).status == 200
    fetches = provider.fetches
    new_kid = provider.new_key("EdDSA", publish=False)
    provider.published = [new_kid]  # the provider rotates: the new key only
    answer = await provider_api.get("/api/me/tasks", token=provider.token(sub, new_kid))
    assert answer.status == 200
    assert provider.fetches == fetches + 1


async def test_unknown_keys_are_fetched_at_most_once_every_30_seconds(
    provider_api: ApiClient, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert identity.UNKNOWN_KEY_FETCH_SECONDS == 30
    fetches = provider.fetches
    unpublished = provider.new_key("EdDSA", publish=False)
    first = await provider_api.get("/api/me/tasks", token=provider.token(subject(), unpublished))
    assert first.status == 401
    assert first.json["detail"] == "The token is signed with a key the identity provider does not publish."
    assert provider.fetches == fetches + 1
    provider.published.append(unpublished)  # now it is published, but within the 30 seconds
    for _ in range(5):
        answer = await provider_api.get("/api/me/tasks", token=provider.token(subject(), unpublished))
        assert answer.status == 401
    assert provider.fetches == fetches + 1
    monkeypatch.setattr(identity, "UNKNOWN_KEY_FETCH_SECONDS", 0.2)  # as if the 30 s had passed
    await asyncio.sleep(0.3)
    assert (
        await provider_api.get("/api/me/tasks", token=provider.token(subject(), unpublished))
    ).status == 200
    assert provider.fetches == fetches + 2


def _bad_tokens(provider: Provider, sub: str) -> dict[str, str]:
    ed_kid, rsa_kid = kid_of(provider, "EdDSA"), kid_of(provider, "RS256")
    claims = provider.claims(sub)
    now = int(time.time())
    # The provider's published kids, with keys it never had (its own are each algorithm's first).
    stranger = Provider(port=0)
    stranger.keys = {kid: (algorithm, KEYS[algorithm][-1]) for kid, (algorithm, _) in provider.keys.items()}
    return {
        "wrong issuer": provider.token(sub, ed_kid, iss="https://evil.example.com"),
        "wrong audience": provider.token(sub, ed_kid, aud="https://another-api.example.com"),
        "audience list without us": provider.token(
            sub, ed_kid, aud=["https://a.example", "https://b.example"]
        ),
        "expired": provider.token(sub, ed_kid, iat=now - 3600, exp=now - 1800),
        "not yet valid": provider.token(sub, ed_kid, nbf=now + 3600),
        "issued in the future": provider.token(sub, ed_kid, iat=now + 3600),
        "no exp": provider.token(sub, ed_kid, exp=None),
        "no iat": provider.token(sub, ed_kid, iat=None),
        "no iss": provider.token(sub, ed_kid, iss=None),
        "no aud": provider.token(sub, ed_kid, aud=None),
        "no sub": provider.token(sub, ed_kid, sub=None),
        "integer sub": provider.token(sub, ed_kid, sub=12345),
        "sub of 256 characters": provider.token(sub, ed_kid, sub="s" * 256),
        "sub with a NUL": provider.token(sub, ed_kid, sub="a\x00b"),
        "alg none": forged({"alg": "none", "kid": ed_kid}, claims),
        "alg none, no kid": forged({"alg": "none"}, claims),
        "HS256 signed with the Ed25519 public key": forged(
            {"alg": "HS256", "kid": ed_kid}, claims, provider.public_pem(ed_kid)
        ),
        "HS256 signed with the RSA public key": forged(
            {"alg": "HS256", "kid": rsa_kid}, claims, provider.public_pem(rsa_kid)
        ),
        "HS256 signed with the JWK": forged(
            {"alg": "HS256", "kid": ed_kid}, claims, orjson.dumps(provider.public_jwk(ed_kid))
        ),
        "ES256 signature under the Ed25519 key's kid": provider.token(
            sub, kid_of(provider, "ES256"), headers_kid=ed_kid
        ),
        "RS256 signature under a PS256 header": provider.token(sub, rsa_kid, algorithm="PS256"),
        "signed by a stranger's key": stranger.token(sub, ed_kid),
        "no kid": jwt.encode(claims, provider.keys[ed_kid][1], algorithm="EdDSA"),
        "garbage with a provider alg": "eyJhbGciOiJFZERTQSJ9.e30.xxx",
    }


def _stub_provider() -> Provider:
    stub = Provider(port=0)
    for algorithm in ALGORITHMS:
        stub.new_key(algorithm)
    return stub


@pytest.mark.parametrize("case", list(_bad_tokens(_stub_provider(), "x")))
async def test_bad_provider_tokens_are_401_and_make_no_user(
    provider_api: ApiClient, provider: Provider, db: asyncpg.Connection, case: str
) -> None:
    sub = subject()
    token = _bad_tokens(provider, sub)[case]
    answer = await provider_api.get("/api/me/tasks", token=token)
    assert answer.status == 401, (case, answer)
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks", error="invalid_token"'
    assert await db.fetchval("SELECT count(*) FROM users WHERE auth_subject = $1", sub) == 0


async def test_only_the_configured_algorithms_are_taken(
    aiohttp_client: Any, make_app: Any, provider: Provider
) -> None:
    api = ApiClient(await aiohttp_client(make_app(**provider_settings(provider, auth_algorithms=("EdDSA",)))))
    await until(lambda: provider.fetches >= 1)
    sub = subject()
    assert (
        await api.get("/api/me/tasks", token=provider.token(sub, kid_of(provider, "EdDSA")))
    ).status == 200
    for algorithm in ("ES256", "RS256"):
        answer = await api.get("/api/me/tasks", token=provider.token(sub, kid_of(provider, algorithm)))
        assert answer.status == 401, algorithm


async def test_cached_keys_stay_in_use_while_the_provider_is_down(
    aiohttp_client: Any, make_app: Any, provider: Provider
) -> None:
    provider.max_age = 1  # the keys go stale after a second, and the service tries to fetch them again
    api = ApiClient(await aiohttp_client(make_app(**provider_settings(provider))))
    await until(lambda: provider.fetches >= 1)
    kid = kid_of(provider, "EdDSA")
    assert (await api.get("/api/me/tasks", token=provider.token(subject(), kid))).status == 200
    await provider.stop()
    keys = api.app[IDENTITY_PROVIDER].keys  # type: ignore[union-attr]
    await until(lambda: keys.failing, seconds=15)  # a refresh has failed since the keys went stale
    await asyncio.sleep(1.5)
    for algorithm in ALGORITHMS:  # tokens never seen before, of new users, on the cached keys
        token = provider.token(subject(), kid_of(provider, algorithm))
        assert (await api.get("/api/me/tasks", token=token)).status == 200, algorithm
    # A key the service does not know cannot be checked while the provider is down: 503, not 401.
    unknown = await api.get("/api/me/tasks", token=provider.token(subject(), provider.new_key("EdDSA")))
    assert unknown.status == 503
    assert unknown.headers["Retry-After"] == "5"
    # Back up: the keys are fetched again, the new one with them.
    await provider.start()
    await until(lambda: not keys.failing, seconds=15)
    answer = await api.get("/api/me/tasks", token=provider.token(subject(), provider.published[-1]))
    assert answer.status == 200


async def test_a_provider_down_at_start_up_does_not_stop_the_service(database_url: str) -> None:
    provider = Provider()  # not started: nothing listens on its port yet
    for algorithm in ALGORITHMS:
        provider.new_key(algorithm)
    env = {
        "AUTH_JWKS_URL": provider.jwks_url,
        "AUTH_ISSUER": provider.issuer,
        "AUTH_AUDIENCE": provider.issuer,
    }
    with running_service(database_url, **env) as (base_url, _):  # it answers /readyz
        token = provider.token(subject(), kid_of(provider, "EdDSA"))
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            account = {"email": f"{uuid.uuid4().hex}@example.com", "password": PASSWORD, "name": "P"}
            async with http.post(f"{base_url}/api/auth/register", json=account) as registered:
                assert registered.status == 201  # password accounts are unaffected
            async with http.get(f"{base_url}/api/me/tasks", headers=headers) as answer:
                assert answer.status == 503
                assert (await answer.json())["detail"].startswith(
                    "The identity provider's keys cannot be fetched"
                )
            await provider.start()
            try:
                deadline = time.monotonic() + 30
                while True:
                    async with http.get(f"{base_url}/api/me/tasks", headers=headers) as answer:
                        if answer.status == 200:
                            break
                        assert answer.status == 503
                    assert time.monotonic() < deadline, "the keys were never fetched"
                    await asyncio.sleep(0.2)
            finally:
                await provider.stop()


async def test_paths_name_the_caller_by_me_by_number_or_by_sub(
    provider_api: ApiClient, provider: Provider, alice: User
) -> None:
    kid = kid_of(provider, "EdDSA")
    sub, other_sub = subject(), "auth0|" + subject()  # the second needs percent-encoding
    token, other = provider.token(sub, kid), provider.token(other_sub, kid)
    created = await provider_api.post(f"/api/{sub}/tasks", token=token, json={"title": "mine"})
    assert created.status == 201
    user_id, task_id = created.json["user_id"], created.json["id"]
    assert created.headers["Location"] == f"/api/{user_id}/tasks/{task_id}"  # answers keep the number
    for name in ("me", sub, str(user_id)):
        listed = await provider_api.get(f"/api/{name}/tasks", token=token)
        assert [task["id"] for task in listed.json] == [task_id], name
        one = await provider_api.get(f"/api/{name}/tasks/{task_id}", token=token)
        assert one.status == 200 and one.json["user_id"] == user_id
    encoded = quote(other_sub, safe="")
    assert (await provider_api.get(f"/api/{encoded}/tasks", token=other)).status == 200
    # Anyone else, by any of their names, is someone else: 403.
    other_id = (await provider_api.get("/api/auth/me", token=other)).json["id"]
    for name in (encoded, str(other_id)):
        assert (await provider_api.get(f"/api/{name}/tasks", token=token)).status == 403
    assert (await provider_api.get(f"/api/{sub}/tasks", token=alice.token)).status == 403
    assert (await provider_api.get(f"/api/{sub}/tasks/{task_id}", token=other)).status == 403
    # `me` works for password accounts too.
    assert (await provider_api.get("/api/me/tasks", token=alice.token)).json == []


async def test_two_providers_users_never_collide(
    aiohttp_client: Any, make_app: Any, provider: Provider, db: asyncpg.Connection
) -> None:
    second = Provider()
    second.new_key("EdDSA")
    await second.start()
    try:
        first_api = ApiClient(await aiohttp_client(make_app(**provider_settings(provider))))
        second_api = ApiClient(await aiohttp_client(make_app(**provider_settings(second))))
        await until(lambda: provider.fetches >= 1 and second.fetches >= 1)
        shared = subject()  # the same subject at both providers: two people
        first_token = provider.token(shared, kid_of(provider, "EdDSA"))
        second_token = second.token(shared, kid_of(second, "EdDSA"))
        assert (
            await first_api.post("/api/me/tasks", token=first_token, json={"title": "first's"})
        ).status == 201
        first_id = (await first_api.get("/api/auth/me", token=first_token)).json["id"]
        second_id = (await second_api.get("/api/auth/me", token=second_token)).json["id"]
        assert first_id != second_id
        assert (await second_api.get("/api/me/tasks", token=second_token)).json == []
        assert (await second_api.get(f"/api/{first_id}/tasks", token=second_token)).status == 403
        # Each service takes only its own provider's tokens.
        assert (await second_api.get("/api/me/tasks", token=first_token)).status == 401
        rows = await db.fetch("SELECT auth_issuer FROM users WHERE auth_subject = $1 ORDER BY id", shared)
        assert [row["auth_issuer"] for row in rows] == [provider.issuer, second.issuer]
    finally:
        await second.stop()


async def test_a_password_accounts_email_is_never_merged(
    provider_api: ApiClient, provider: Provider, alice: User
) -> None:
    await provider_api.post(alice.tasks, token=alice.token, json={"title": "alice's secret"})
    token = provider.token(subject(), kid_of(provider, "EdDSA"), email=alice.email.upper())
    me = await provider_api.get("/api/auth/me", token=token)
    assert me.status == 200
    assert me.json["id"] != alice.id  # another account, with the email the provider gave
    assert me.json["email"] == alice.email.upper()
    assert (await provider_api.get("/api/me/tasks", token=token)).json == []
    login = await provider_api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert login.status == 200 and login.json["user"]["id"] == alice.id
    # Registering that email again is still refused, and a provider's user has no password to log in with.
    taken = await provider_api.post(
        "/api/auth/register", json={"email": alice.email, "password": "a new password", "name": "X"}
    )
    assert taken.status == 409
    # The other way round too: the provider's user's email does not keep anyone from registering it.
    provider_email = f"{uuid.uuid4().hex}@example.com"
    await provider_api.get(
        "/api/auth/me", token=provider.token(subject(), kid_of(provider, "ES256"), email=provider_email)
    )
    registered = await provider_api.post(
        "/api/auth/register", json={"email": provider_email, "password": "a new password", "name": "Y"}
    )
    assert registered.status == 201


async def test_a_providers_user_has_no_password_here_and_no_session(
    provider_api: ApiClient, provider: Provider
) -> None:
    token = provider.token(subject(), kid_of(provider, "EdDSA"))
    change = await provider_api.put(
        "/api/auth/password", token=token, json={"current_password": "x", "new_password": "long enough"}
    )
    assert change.status == 403
    assert "identity provider" in change.json["detail"]
    logout = await provider_api.post("/api/auth/logout", token=token)
    assert logout.status == 403
    assert (await provider_api.get("/api/auth/sessions", token=token)).json == []
