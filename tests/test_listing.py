"""Listing: filters, search, sort orders, keyset pages with Link headers, cursors, and plans."""

import base64
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from service.db import migrate
from service.listing import SORT_ORDERS, page_statement, plan_cache_mode
from tests.conftest import ApiClient, User, fresh_database

NEXT_LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


async def seed(db: asyncpg.Connection, user: User, count: int, **columns: str) -> None:
    """`count` tasks for `user` in one statement; `columns` are SQL expressions of n (1..count)."""
    names = ["user_id", "title", *columns]
    values = ["$1", "'task ' || n", *columns.values()]
    await db.execute(
        f"INSERT INTO tasks ({', '.join(names)}) SELECT {', '.join(values)} FROM generate_series(1, $2) AS n",
        user.id,
        count,
    )


def next_url(answer: Any) -> str | None:
    link = answer.headers.get("Link")
    if link is None:
        return None
    match = NEXT_LINK.match(link)
    assert match, link
    url = urlsplit(match["url"])
    return f"{url.path}?{url.query}"


async def walk(api: ApiClient, user: User, url: str) -> list[list[dict]]:
    """Every page of a listing, following Link headers."""
    pages = []
    next_page: str | None = url
    while next_page is not None:
        answer = await api.get(next_page, token=user.token)
        assert answer.status == 200, answer.json
        pages.append(answer.json)
        next_page = next_url(answer)
        assert len(pages) < 100
    return pages


async def test_pages_cover_every_task_once_in_order(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    await seed(db, alice, 250)  # one statement: every created_at is the same, so only ids order them
    pages = await walk(api, alice, f"{alice.tasks}?limit=100")
    assert [len(page) for page in pages] == [100, 100, 50]
    ids = [task["id"] for page in pages for task in page]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 250


async def test_without_limit_every_task_comes_and_no_link(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 101)
    answer = await api.get(alice.tasks, token=alice.token)
    assert len(answer.json) == 101 and "Link" not in answer.headers


async def test_pages_have_a_link_and_the_last_has_none(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 101)
    first = await api.get(f"{alice.tasks}?limit=100", token=alice.token)
    assert len(first.json) == 100
    link = first.headers["Link"]
    assert link.startswith(f"<{alice.tasks}?") and link.endswith('>; rel="next"')
    last = await api.get(next_url(first), token=alice.token)
    assert len(last.json) == 1 and "Link" not in last.headers


async def test_a_cursor_without_a_limit_pages_by_100(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 250)
    cursor = await first_cursor(api, alice, "limit=50")
    answer = await api.get(f"{alice.tasks}?cursor={cursor}", token=alice.token)
    assert len(answer.json) == 100 and "Link" in answer.headers


async def test_exactly_a_full_page_has_no_next_link(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 5)
    answer = await api.get(f"{alice.tasks}?limit=5", token=alice.token)
    assert len(answer.json) == 5 and "Link" not in answer.headers


async def test_an_empty_listing_is_an_empty_array(api: ApiClient, alice: User) -> None:
    answer = await api.get(f"{alice.tasks}?q=nothing&status=completed", token=alice.token)
    assert answer.json == [] and "Link" not in answer.headers


@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten", "1.5"])
async def test_limit_out_of_bounds_is_400(api: ApiClient, alice: User, limit: str) -> None:
    answer = await api.get(f"{alice.tasks}?limit={limit}", token=alice.token)
    assert answer.status == 400 and list(answer.json["errors"]) == ["limit"]


@pytest.mark.parametrize("limit", [1, 200])
async def test_limit_bounds_are_allowed(api: ApiClient, alice: User, db, limit: int) -> None:
    await seed(db, alice, 201)
    answer = await api.get(f"{alice.tasks}?limit={limit}", token=alice.token)
    assert len(answer.json) == limit


async def test_the_next_link_keeps_every_parameter(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 30, tags="ARRAY['Home', 'Work']", priority="n % 3")
    answer = await api.get(
        f"{alice.tasks}?tag=home&tag=WORK&sort=priority&order=asc&limit=10", token=alice.token
    )
    query = parse_qs(urlsplit(next_url(answer)).query)
    assert query["tag"] == ["home", "WORK"]
    assert query["sort"] == ["priority"] and query["order"] == ["asc"] and query["limit"] == ["10"]
    assert len(query["cursor"]) == 1


async def test_status_filter(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 10, completed="n <= 3")
    done = await api.get(f"{alice.tasks}?status=completed", token=alice.token)
    pending = await api.get(f"{alice.tasks}?status=pending", token=alice.token)
    every = await api.get(f"{alice.tasks}?status=all", token=alice.token)
    assert (len(done.json), len(pending.json), len(every.json)) == (3, 7, 10)
    assert all(task["completed"] for task in done.json)


async def test_priority_filter_is_repeatable(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, 9, priority="n % 3")  # three of each
    answer = await api.get(f"{alice.tasks}?priority=high&priority=low", token=alice.token)
    assert sorted(task["priority"] for task in answer.json) == ["high"] * 3 + ["low"] * 3


async def test_tag_filter_needs_every_tag_in_any_case(api: ApiClient, alice: User) -> None:
    for tags in (["Home", "Urgent"], ["home"], ["URGENT"], ["Home", "urgent", "Later"]):
        await api.post(alice.tasks, token=alice.token, json={"title": "t", "tags": tags})
    both = await api.get(f"{alice.tasks}?tag=home&tag=%20urgent%20", token=alice.token)
    assert sorted(len(task["tags"]) for task in both.json) == [2, 3]
    home = await api.get(f"{alice.tasks}?tag=HOME", token=alice.token)
    assert len(home.json) == 3


async def test_search_finds_text_in_title_or_description_in_any_case(api: ApiClient, alice: User) -> None:
    for title, description in [
        ("Buy MILK", None),
        ("Groceries", "oat milk, bread"),
        ("Call mum", "about the milkman"),
        ("Nothing", "here"),
        ("100% done_ish", None),
    ]:
        await api.post(alice.tasks, token=alice.token, json={"title": title, "description": description})
    found = await api.get(f"{alice.tasks}?q=Milk", token=alice.token)
    assert sorted(task["title"] for task in found.json) == ["Buy MILK", "Call mum", "Groceries"]
    # LIKE wildcards are plain text in a search
    assert [t["title"] for t in (await api.get(f"{alice.tasks}?q=%25%20done", token=alice.token)).json] == [
        "100% done_ish"
    ]
    assert (await api.get(f"{alice.tasks}?q=e_i", token=alice.token)).json[0]["title"] == "100% done_ish"
    assert (await api.get(f"{alice.tasks}?q=o_t", token=alice.token)).json == []


async def test_search_never_crosses_users(api: ApiClient, alice: User, bob: User) -> None:
    await api.post(bob.tasks, token=bob.token, json={"title": "secret plan"})
    assert (await api.get(f"{alice.tasks}?q=secret", token=alice.token)).json == []


async def test_due_filters_and_overdue(api: ApiClient, alice: User) -> None:
    for title, due, completed in [
        ("past", "2020-01-01T00:00:00Z", False),
        ("past but done", "2020-01-02T00:00:00Z", True),
        ("future", "2099-01-01T00:00:00Z", False),
        ("undated", None, False),
    ]:
        await api.post(
            alice.tasks, token=alice.token, json={"title": title, "due_date": due, "completed": completed}
        )

    async def titles(query: str) -> list[str]:
        answer = await api.get(f"{alice.tasks}?{query}", token=alice.token)
        assert answer.status == 200, answer.json
        return sorted(task["title"] for task in answer.json)

    assert await titles("overdue=true") == ["past"]
    assert await titles("overdue=false") == ["future", "past but done", "undated"]
    assert await titles("due_before=2021-01-01T00:00:00Z") == ["past", "past but done"]
    assert await titles("due_after=2020-01-01T00:00:00%2B00:00") == ["future", "past but done"]
    assert await titles("due_after=2020-01-01T12:00:00Z&due_before=2030-01-01T00:00:00Z") == ["past but done"]


async def test_due_date_sort_puts_undated_tasks_last_both_ways(api: ApiClient, alice: User, db) -> None:
    await seed(
        db, alice, 6, due_date="CASE WHEN n % 2 = 0 THEN timestamptz '2026-01-01' + n * interval '1 day' END"
    )
    for order, expected_due in [("asc", [2, 4, 6]), ("desc", [6, 4, 2])]:
        pages = await walk(api, alice, f"{alice.tasks}?sort=due_date&order={order}&limit=2")
        tasks = [task for page in pages for task in page]
        assert [int(task["due_date"][8:10]) - 1 for task in tasks[:3]] == expected_due
        assert [task["due_date"] for task in tasks[3:]] == [None, None, None]
        undated_ids = [task["id"] for task in tasks[3:]]
        assert undated_ids == sorted(undated_ids, reverse=order == "desc")


async def test_title_sort_ignores_case_and_breaks_ties_by_id(api: ApiClient, alice: User) -> None:
    for title in ["banana", "Apple", "cherry", "apple"]:
        await api.post(alice.tasks, token=alice.token, json={"title": title})
    pages = await walk(api, alice, f"{alice.tasks}?sort=title&limit=1")
    titles = [page[0]["title"] for page in pages]
    assert titles == ["Apple", "apple", "banana", "cherry"]
    descending = (await api.get(f"{alice.tasks}?sort=title&order=desc", token=alice.token)).json
    assert [task["title"] for task in descending] == ["cherry", "banana", "apple", "Apple"]


@pytest.mark.parametrize(("sort", "order"), sorted(SORT_ORDERS))
async def test_every_sort_pages_through_ties_without_loss(
    api: ApiClient, alice: User, db, sort: str, order: str
) -> None:
    # Few distinct keys, many ties: the keyset must still visit each task exactly once.
    await seed(
        db,
        alice,
        23,
        priority="n % 3",
        due_date="CASE WHEN n % 4 > 0 THEN timestamptz '2026-01-01' + (n % 4) * interval '1 day' END",
    )
    await db.execute(
        "UPDATE tasks SET title = CASE WHEN id % 2 = 0 THEN 'Same' ELSE 'same' END WHERE user_id = $1",
        alice.id,
    )
    pages = await walk(api, alice, f"{alice.tasks}?sort={sort}&order={order}&limit=4")
    ids = [task["id"] for page in pages for task in page]
    assert len(ids) == len(set(ids)) == 23
    whole = (await api.get(f"{alice.tasks}?sort={sort}&order={order}&limit=200", token=alice.token)).json
    assert ids == [task["id"] for task in whole]


async def test_the_default_order_is_newest_first(api: ApiClient, alice: User) -> None:
    ids = [
        (await api.post(alice.tasks, token=alice.token, json={"title": f"{n}"})).json["id"] for n in range(3)
    ]
    assert [task["id"] for task in (await api.get(alice.tasks, token=alice.token)).json] == ids[::-1]
    updated = await api.get(f"{alice.tasks}?sort=updated&order=asc", token=alice.token)
    assert [task["id"] for task in updated.json] == ids


async def first_cursor(api: ApiClient, user: User, query: str) -> str:
    answer = await api.get(f"{user.tasks}?{query}", token=user.token)
    return parse_qs(urlsplit(next_url(answer)).query)["cursor"][0]


@pytest.fixture
async def seeded(db, alice: User, bob: User) -> None:
    await seed(db, alice, 5, tags="ARRAY['a']")
    await seed(db, bob, 5, tags="ARRAY['a']")


@pytest.mark.parametrize(
    "other_query",
    ["sort=title", "order=asc", "tag=a", "status=pending", "q=task", "priority=low"],
)
async def test_a_cursor_for_another_listing_is_400(
    api: ApiClient, alice: User, seeded, other_query: str
) -> None:
    cursor = await first_cursor(api, alice, "limit=2")
    answer = await api.get(f"{alice.tasks}?limit=2&{other_query}&cursor={cursor}", token=alice.token)
    assert answer.status == 400 and list(answer.json["errors"]) == ["cursor"]


async def test_a_cursor_may_change_the_page_size(api: ApiClient, alice: User, seeded) -> None:
    cursor = await first_cursor(api, alice, "limit=2")
    assert len((await api.get(f"{alice.tasks}?limit=3&cursor={cursor}", token=alice.token)).json) == 3


async def test_another_users_cursor_is_400_not_their_data(
    api: ApiClient, alice: User, bob: User, seeded
) -> None:
    cursor = await first_cursor(api, alice, "limit=2")
    answer = await api.get(f"{bob.tasks}?limit=2&cursor={cursor}", token=bob.token)
    assert answer.status == 400


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # signature
        lambda c: ("x" if c[0] != "x" else "y") + c[1:],  # payload
        lambda c: c[:-2],  # cut short
        lambda c: "garbage",
        lambda c: ".",
        lambda c: "%00%FF",
    ],
)
async def test_a_tampered_cursor_is_400(api: ApiClient, alice: User, seeded, tamper: Any) -> None:
    cursor = tamper(await first_cursor(api, alice, "limit=2"))
    answer = await api.get(f"{alice.tasks}?limit=2&cursor={cursor}", token=alice.token)
    assert answer.status == 400 and "cursor" in answer.json["errors"]


async def test_the_next_link_is_relative_whatever_the_host_header_says(
    api: ApiClient, alice: User, db
) -> None:
    await seed(db, alice, 3)
    answer = await api.get(f"{alice.tasks}?limit=2", token=alice.token, headers={"Host": "evil.example"})
    assert answer.headers["Link"].startswith(f"<{alice.tasks}?limit=2&cursor=")
    assert "evil" not in answer.headers["Link"]


async def test_the_next_link_is_absolute_under_public_url(aiohttp_client, make_app, alice: User, db) -> None:
    await seed(db, alice, 3)
    api = ApiClient(await aiohttp_client(make_app(public_url="https://tasks.example.com/v1")))
    answer = await api.get(f"{alice.tasks}?limit=2", token=alice.token, headers={"Host": "evil.example"})
    assert answer.headers["Link"].startswith(f"<https://tasks.example.com/v1{alice.tasks}?limit=2&cursor=")


@pytest.mark.parametrize("sort", ["title", "created", "due_date"])
async def test_a_cursor_reveals_nothing_of_the_tasks(api: ApiClient, alice: User, db, sort: str) -> None:
    await db.execute(
        "INSERT INTO tasks (user_id, title, due_date)"
        " SELECT $1, 'Secret Plan ' || n, '2031-05-06T07:08:09Z' FROM generate_series(1, 3) AS n",
        alice.id,
    )
    answer = await api.get(f"{alice.tasks}?limit=1&sort={sort}", token=alice.token)
    cursor = parse_qs(urlsplit(next_url(answer)).query)["cursor"][0]
    task = answer.json[0]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    for clue in ["secret plan", "Secret", "2031", task["created_at"][:10]]:
        assert clue.encode() not in raw, clue
        assert clue not in cursor


async def test_a_forged_cursor_with_a_valid_shape_is_400(api: ApiClient, alice: User, seeded) -> None:
    payload = orjson.dumps([1, "0" * 32, "2026-01-01", 1])
    forged = base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".AAAA"
    assert (await api.get(f"{alice.tasks}?cursor={forged}", token=alice.token)).status == 400


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=red", "colour"),
        ("status=done", "status"),
        ("priority=urgent", "priority"),
        ("sort=size", "sort"),
        ("order=up", "order"),
        ("due_before=yesterday", "due_before"),
        ("due_after=2026-01-01T00:00:00", "due_after"),
        ("overdue=yes", "overdue"),
        ("q=", "q"),
        ("q=" + "x" * 201, "q"),
        ("tag=" + "x" * 51, "tag"),
        ("status=all&status=pending", "status"),
        ("limit=5&limit=6", "limit"),
        ("q=a%00b", "q"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(
    api: ApiClient, alice: User, query: str, named: str
) -> None:
    answer = await api.get(f"{alice.tasks}?{query}", token=alice.token)
    assert answer.status == 400
    assert named in answer.json["errors"]


# Plans: the listings named in the issue are served by their indexes, for custom plans and for
# the generic plans PostgreSQL switches prepared statements to, and a deep page reads about as
# many rows as the first.

PLAN_CASES = [
    ("created", "desc", {}, "tasks_user_created_idx"),
    ("due_date", "asc", {}, "tasks_user_due_asc_idx"),
    ("due_date", "desc", {}, "tasks_user_due_desc_idx"),
    ("priority", "desc", {}, "tasks_user_priority_idx"),
    ("created", "desc", {"pattern": "%needle%"}, "tasks_search_idx"),
    ("due_date", "asc", {"tags": ["rare"]}, "tasks_tag_keys_idx"),
]


@pytest.fixture(scope="module")
def plans_database(pg_server_url: str) -> Iterator[tuple[str, int]]:
    """A database of these tests' own, seeded once: a user with 20,000 tasks among other
    users' tasks, statistics up to date. Returns its URL and the heavy user's id."""
    with fresh_database(pg_server_url) as url:
        migrate(url)
        with psycopg.connect(url) as conn:
            user_ids = [
                conn.execute(
                    "INSERT INTO users (email, name, password_hash) VALUES (%s, 'u', 'x') RETURNING id",
                    (f"{n}@x.io",),
                ).fetchone()[0]
                for n in range(6)
            ]
            for other in user_ids[1:]:
                conn.execute(
                    "INSERT INTO tasks (user_id, title, due_date)"
                    " SELECT %s, 'other', now() + n * interval '1 hour' FROM generate_series(1, 2000) n",
                    (other,),
                )
            conn.execute(
                """INSERT INTO tasks (user_id, title, priority, due_date, description, tags)
                SELECT %s, 'task ' || n, n %% 3,
                       CASE WHEN n %% 10 > 0 THEN now() + n * interval '1 minute' END,
                       CASE WHEN n %% 5000 = 0 THEN 'find the needle' ELSE 'hay ' || md5(n::text) END,
                       CASE WHEN n %% 5000 = 0 THEN ARRAY['Rare'] ELSE ARRAY['common'] END
                FROM generate_series(1, 20000) n""",
                (user_ids[0],),
            )
            conn.execute("ANALYZE tasks")
        yield url, user_ids[0]


@pytest.fixture
def plans_db(plans_database: tuple[str, int]) -> Iterator[tuple[psycopg.Connection, int]]:
    url, heavy_user = plans_database
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn, heavy_user


def explain(conn: psycopg.Connection, plan_mode: str, sort: str, order: str, values: dict[str, Any]) -> dict:
    """The plan of the listing's real statement, prepared as the service's driver prepares it,
    so that `force_generic_plan` shows the plan PostgreSQL may settle on for it: unless the
    service has it planned for its values each time, as it does for some filters."""
    statement, names = page_statement(sort, order, frozenset(values))
    if plan_cache_mode(frozenset(values)) != "auto":
        plan_mode = plan_cache_mode(frozenset(values))
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE page AS {statement}")  # type: ignore[arg-type]
    conn.execute(f"SET plan_cache_mode = {plan_mode}")  # type: ignore[arg-type]
    arguments = sql.SQL(", ").join(sql.Literal(values[name]) for name in names)
    row = conn.execute(
        sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page({})").format(arguments)
    ).fetchone()
    plan: dict = row[0][0]["Plan"]
    conditions = " ".join(str(node.get("Index Cond", "")) for node in plan_nodes(plan))
    assert ("$" in conditions) == (plan_mode == "force_generic_plan")  # the plan is of the kind asked for
    return plan


def plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize(("sort", "order", "filters", "index"), PLAN_CASES)
def test_listings_use_their_index(
    plans_db: tuple[psycopg.Connection, int], plan_mode: str, sort: str, order: str, filters: dict, index: str
) -> None:
    conn, heavy_user = plans_db
    plan = explain(conn, plan_mode, sort, order, {"user_id": heavy_user, "limit": 101, **filters})
    nodes = plan_nodes(plan)
    assert index in {node.get("Index Name") for node in nodes}, plan
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes)


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize(("sort", "order"), [("created", "desc"), ("due_date", "asc"), ("priority", "desc")])
def test_a_deep_page_reads_no_more_rows_than_the_first(
    plans_db: tuple[psycopg.Connection, int], plan_mode: str, sort: str, order: str
) -> None:
    conn, heavy_user = plans_db
    statement, names = page_statement(sort, order, frozenset({"user_id", "limit"}))
    every = {"user_id": heavy_user, "limit": 20000}
    query = re.sub(r"\$(\d+)", r"%(p\1)s", statement)  # a parameter may be used twice
    arguments = {f"p{number}": every[name] for number, name in enumerate(names, 1)}
    rows = conn.cursor(row_factory=dict_row).execute(query, arguments).fetchall()
    sort_key, task_id = rows[18000]["sort_key"], rows[18000]["id"]  # the position after page 180 of 100
    first = explain(conn, plan_mode, sort, order, {"user_id": heavy_user, "limit": 101})
    deep = {"user_id": heavy_user, "limit": 101, "after_key": sort_key, "after_id": task_id}
    later = explain(conn, plan_mode, sort, order, deep)
    assert later["Actual Rows"] == first["Actual Rows"] == 101
    scanned = [node["Actual Rows"] for node in plan_nodes(later) if "Scan" in node["Node Type"]]
    assert max(scanned) <= 101, later
