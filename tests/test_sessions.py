"""Sessions: refresh-token rotation and reuse detection, logout, listing and ending sessions,
password changes; and revocations reaching every worker of every instance."""

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.auth import mint_token
from tests.conftest import PASSWORD, TEST_SECRET, ApiClient, User

REGISTRATION = {"email": "grace@example.com", "password": "analytical engine", "name": "Grace"}


async def _login(api: ApiClient, user: User, **headers: str) -> dict[str, Any]:
    answer = await api.post(
        "/api/auth/login", json={"email": user.email, "password": PASSWORD}, headers=headers or None
    )
    assert answer.status == 200, answer
    grant: dict[str, Any] = answer.json
    return grant


async def _refresh(api: ApiClient, refresh_token: Any) -> Any:
    return await api.post("/api/auth/refresh", json={"refresh_token": refresh_token})


async def _works(api: ApiClient, grant: dict[str, Any]) -> bool:
    answer = await api.get("/api/auth/me", token=grant["access_token"])
    assert answer.status in (200, 401), answer
    return answer.status == 200


@pytest.fixture
async def strict(aiohttp_client: Any, make_app: Any) -> ApiClient:
    """An app with no grace period for a reused refresh token."""
    return ApiClient(await aiohttp_client(make_app(refresh_reuse_grace_seconds=0)))


async def test_register_and_login_answer_what_the_original_clients_read(api: ApiClient, alice: User) -> None:
    for answer in (
        await api.post("/api/auth/register", json=REGISTRATION),
        await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD}),
    ):
        grant = answer.json
        assert grant["token"] == grant["access_token"]
        assert grant["token_type"] == "bearer"
        assert grant["expires_in"] == 900
        assert grant["refresh_expires_in"] == 30 * 86400
        user_id, _, secret = grant["refresh_token"].partition(".")
        assert user_id == str(grant["user"]["id"]) and len(secret) >= 43  # 256 random bits
        assert answer.headers["Cache-Control"] == "no-store"


async def test_a_session_row_holds_only_a_hash_of_its_refresh_token(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    grant = await _login(api, alice, **{"User-Agent": "phone/1.0"})
    row = await db.fetchrow("SELECT * FROM sessions WHERE user_id = $1", alice.id)
    assert row["user_agent"] == "phone/1.0"
    assert grant["refresh_token"].encode() not in bytes(row["refresh_hash"])
    assert len(row["refresh_hash"]) == 32
    assert row["expires_at"] > row["created_at"]


async def test_refresh_rotates_both_tokens(api: ApiClient, alice: User) -> None:
    first = await _login(api, alice)
    answer = await _refresh(api, first["refresh_token"])
    assert answer.status == 200
    second = answer.json
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user"]["id"] == alice.id
    assert await _works(api, second)
    third = await _refresh(api, second["refresh_token"])
    assert third.status == 200


async def test_a_reused_refresh_token_ends_the_whole_session(strict: ApiClient, alice: User) -> None:
    first = await _login(strict, alice)
    second = (await _refresh(strict, first["refresh_token"])).json
    reused = await _refresh(strict, first["refresh_token"])
    assert reused.status == 401
    assert reused.content_type == "application/problem+json"
    assert "ended" in reused.json["detail"]
    # The thief's replay took the legitimate client's newest tokens down with it.
    assert (await _refresh(strict, second["refresh_token"])).status == 401
    assert not await _works(strict, second)
    assert not await _works(strict, first)
    # Other sessions of the same user are untouched.
    assert await _works(strict, await _login(strict, alice))


async def test_a_double_submit_within_the_grace_period_is_refused_but_ends_nothing(
    api: ApiClient, alice: User
) -> None:
    first = await _login(api, alice)
    second = (await _refresh(api, first["refresh_token"])).json
    again = await _refresh(api, first["refresh_token"])
    assert again.status == 401
    assert "newest" in again.json["detail"]
    assert await _works(api, second)
    assert (await _refresh(api, second["refresh_token"])).status == 200


async def test_only_the_latest_rotation_has_a_grace_period(api: ApiClient, alice: User) -> None:
    first = await _login(api, alice)
    second = (await _refresh(api, first["refresh_token"])).json
    third = (await _refresh(api, second["refresh_token"])).json
    assert (await _refresh(api, first["refresh_token"])).status == 401  # two rotations old: theft
    assert not await _works(api, third)


@pytest.mark.parametrize(
    "refresh_token", ["", "nonsense", "1.AAAA", "99999999999999999999.x", None, 12, ["a"]]
)
async def test_bad_refresh_tokens(api: ApiClient, refresh_token: Any) -> None:
    answer = await _refresh(api, refresh_token)
    if isinstance(refresh_token, str) and refresh_token:
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks", error="invalid_token"'
    else:
        assert answer.status == 400
        assert "refresh_token" in answer.json["errors"]


async def test_a_missing_refresh_token_is_a_400_naming_it(api: ApiClient) -> None:
    answer = await api.post("/api/auth/refresh", json={})
    assert answer.status == 400
    assert "refresh_token" in answer.json["errors"]


async def test_an_unknown_refresh_token_of_a_real_user_is_refused(api: ApiClient, alice: User) -> None:
    await _login(api, alice)
    forged = f"{alice.id}.{'A' * 43}"
    assert (await _refresh(api, forged)).status == 401


async def test_expired_tokens_of_both_kinds_are_refused(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    grant = await _login(api, alice)
    session_id = await db.fetchval("SELECT id::text FROM sessions WHERE user_id = $1", alice.id)
    expired_access = mint_token(alice.id, TEST_SECRET, -60, session_id=session_id)
    answer = await api.get("/api/auth/me", token=expired_access)
    assert answer.status == 401 and "expired" in answer.json["detail"]
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", alice.id
    )
    assert (await _refresh(api, grant["refresh_token"])).status == 401
    assert (await api.get("/api/auth/sessions", token=alice.token)).json == []


async def test_logout_ends_the_session_of_the_bearer_token(api: ApiClient, alice: User) -> None:
    grant = await _login(api, alice)
    other = await _login(api, alice)
    assert (await api.post("/api/auth/logout", token=grant["access_token"])).status == 204
    assert not await _works(api, grant)
    assert (await _refresh(api, grant["refresh_token"])).status == 401
    assert await _works(api, other)
    # Logging out twice: the token is now refused.
    assert (await api.post("/api/auth/logout", token=grant["access_token"])).status == 401


async def test_logout_with_only_the_refresh_token(api: ApiClient, alice: User) -> None:
    grant = await _login(api, alice)
    expired = mint_token(alice.id, TEST_SECRET, -60, session_id="00000000-0000-4000-8000-000000000000")
    answer = await api.post("/api/auth/logout", token=expired, json={"refresh_token": grant["refresh_token"]})
    assert answer.status == 204
    assert not await _works(api, grant)
    assert (await _refresh(api, grant["refresh_token"])).status == 401
    again = await api.post("/api/auth/logout", json={"refresh_token": grant["refresh_token"]})
    assert again.status == 401


async def test_logout_needs_some_credential(api: ApiClient) -> None:
    answer = await api.post("/api/auth/logout")
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks"'
    assert (await api.post("/api/auth/logout", json={})).status == 400


async def test_a_minted_token_has_no_session_to_end(api: ApiClient, alice: User) -> None:
    answer = await api.post("/api/auth/logout", token=alice.token)
    assert answer.status == 403
    assert "python -m service token" in answer.json["detail"]
    assert (await api.get(alice.tasks, token=alice.token)).status == 200


async def test_sessions_are_listed_with_the_current_one_marked(api: ApiClient, alice: User) -> None:
    laptop = await _login(api, alice, **{"User-Agent": "laptop"})
    await _login(api, alice, **{"User-Agent": "phone"})
    answer = await api.get("/api/auth/sessions", token=laptop["access_token"])
    assert answer.status == 200
    assert answer.headers["Cache-Control"] == "no-store"
    sessions = answer.json
    assert sorted(session["user_agent"] for session in sessions) == ["laptop", "phone"]
    assert [session["user_agent"] for session in sessions if session["current"]] == ["laptop"]


async def test_ending_one_session(api: ApiClient, alice: User) -> None:
    laptop = await _login(api, alice, **{"User-Agent": "laptop"})
    phone = await _login(api, alice, **{"User-Agent": "phone"})
    sessions = (await api.get("/api/auth/sessions", token=laptop["access_token"])).json
    (phone_id,) = [session["id"] for session in sessions if session["user_agent"] == "phone"]
    assert (await api.delete(f"/api/auth/sessions/{phone_id}", token=laptop["access_token"])).status == 204
    assert not await _works(api, phone)
    assert (await _refresh(api, phone["refresh_token"])).status == 401
    assert await _works(api, laptop)
    assert (await api.delete(f"/api/auth/sessions/{phone_id}", token=laptop["access_token"])).status == 404


async def test_another_users_session_is_not_found(api: ApiClient, alice: User, bob: User) -> None:
    bobs = await _login(api, bob)
    bob_session = (await api.get("/api/auth/sessions", token=bobs["access_token"])).json[0]["id"]
    answer = await api.delete(f"/api/auth/sessions/{bob_session}", token=alice.token)
    assert answer.status == 404
    assert await _works(api, bobs)
    unknown = await api.delete("/api/auth/sessions/00000000-0000-4000-8000-000000000000", token=alice.token)
    assert unknown.status == 404


async def test_ending_every_session_includes_the_current_one(api: ApiClient, alice: User) -> None:
    grants = [await _login(api, alice) for _ in range(3)]
    assert (await api.delete("/api/auth/sessions", token=grants[0]["access_token"])).status == 204
    for grant in grants:
        assert not await _works(api, grant)
        assert (await _refresh(api, grant["refresh_token"])).status == 401


async def test_a_password_change_ends_every_other_session(api: ApiClient, alice: User) -> None:
    mine, other = await _login(api, alice), await _login(api, alice)
    change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    answer = await api.put("/api/auth/password", token=mine["access_token"], json=change)
    assert answer.status == 204
    assert await _works(api, mine)
    assert (await _refresh(api, mine["refresh_token"])).status == 200
    assert not await _works(api, other)
    assert (await _refresh(api, other["refresh_token"])).status == 401
    old = await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert old.status == 401
    new = await api.post("/api/auth/login", json={"email": alice.email, "password": change["new_password"]})
    assert new.status == 200


async def test_a_wrong_current_password_is_403_and_counts_as_a_failed_login(
    aiohttp_client: Any, make_app: Any, alice: User
) -> None:
    api = ApiClient(await aiohttp_client(make_app(rate_limit_logins=2)))
    grant = await _login(api, alice)
    change = {"current_password": "not it", "new_password": "a brand new passphrase"}
    statuses = [
        (await api.put("/api/auth/password", token=grant["access_token"], json=change)).status
        for _ in range(3)
    ]
    assert statuses == [403, 403, 429]
    login = await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert login.status == 429


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"new_password": "long enough now"}, "current_password"),
        ({"current_password": PASSWORD}, "new_password"),
    ],
)
async def test_a_new_password_is_checked_like_at_register(
    api: ApiClient, alice: User, body: dict[str, str], field: str
) -> None:
    answer = await api.put("/api/auth/password", token=alice.token, json=body)
    assert answer.status == 400
    assert field in answer.json["errors"]


# Real processes: a pool of real connections, several workers, several instances.


async def _post_json(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def _register(base_url: str) -> dict[str, Any]:
    account = {"email": f"{time.time_ns()}@example.com", "password": "analytical engine", "name": "W"}
    status, grant = await _post_json(f"{base_url}/api/auth/register", account)
    assert status == 201
    return grant


async def test_concurrent_refreshes_with_one_token_give_tokens_at_most_once(service_url: str) -> None:
    grant = await _register(service_url)
    results = await asyncio.gather(
        *(
            _post_json(f"{service_url}/api/auth/refresh", {"refresh_token": grant["refresh_token"]})
            for _ in range(20)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) <= 1, statuses
    assert set(statuses) <= {200, 401}, statuses
