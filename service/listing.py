"""Listing tasks: the sort orders, the page statements made from sql/list_tasks.sql.template,
and the opaque keyset cursors that carry a listing from one page to the next."""

import dataclasses
import functools
import hashlib
import re
from typing import Any

import asyncpg
import orjson

from service.cursors import seal, unseal
from service.db import SQL_DIR
from service.queries import numbered

_TEMPLATE = (SQL_DIR / "list_tasks.sql.template").read_text()
_OPTIONAL_LINE = re.compile(r"^(?P<sql>.*?)\s*--if (?P<name>\w+)\s*$")


@dataclasses.dataclass(frozen=True)
class SortOrder:
    """One way to order a listing: an indexed key expression, tie-broken by id."""

    key: str
    key_type: str
    direction: str

    @property
    def after(self) -> str:
        return ">" if self.direction == "ASC" else "<"


# (sort, order) -> how. Tasks without a due date come last in both directions.
SORT_ORDERS = {
    ("created", "asc"): SortOrder("created_at", "timestamptz", "ASC"),
    ("created", "desc"): SortOrder("created_at", "timestamptz", "DESC"),
    ("updated", "asc"): SortOrder("updated_at", "timestamptz", "ASC"),
    ("updated", "desc"): SortOrder("updated_at", "timestamptz", "DESC"),
    ("title", "asc"): SortOrder("lower(title)", "text", "ASC"),
    ("title", "desc"): SortOrder("lower(title)", "text", "DESC"),
    ("due_date", "asc"): SortOrder("coalesce(due_date, 'infinity')", "timestamptz", "ASC"),
    ("due_date", "desc"): SortOrder("coalesce(due_date, '-infinity')", "timestamptz", "DESC"),
    ("priority", "asc"): SortOrder("priority", "smallint", "ASC"),
    ("priority", "desc"): SortOrder("priority", "smallint", "DESC"),
}
# Without an `order`, each sort goes the way people mostly want it.
DEFAULT_ORDER = {"created": "desc", "updated": "desc", "title": "asc", "due_date": "asc", "priority": "desc"}
# Whether their index beats walking the user's tasks in order depends on the value (a rare word
# or tag, or a common one), which a generic plan of a prepared statement cannot see; listings
# with them are planned for their values each time.
VALUE_DEPENDENT_FILTERS = frozenset({"tags", "pattern"})


def plan_cache_mode(given: frozenset[str]) -> str:
    """How PostgreSQL should plan the page statement for these filters and parameters."""
    return "force_custom_plan" if given & VALUE_DEPENDENT_FILTERS else "auto"


@functools.lru_cache(maxsize=512)
def page_statement(sort: str, order: str, given: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """The SQL for one sort order and set of given filters, and its parameters' names in $n order."""
    sort_order = SORT_ORDERS[(sort, order)]
    lines = []
    for line in _TEMPLATE.splitlines():
        if line.startswith("--"):
            continue
        optional = _OPTIONAL_LINE.match(line)
        if optional is not None:
            if optional["name"] not in given:
                continue
            line = optional["sql"]
        lines.append(line)
    sql = "\n".join(lines).format(**dataclasses.asdict(sort_order), after=sort_order.after)
    names: list[str] = []
    return numbered(sql, names), tuple(names)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What one listing request asks for, validated; `filters` holds only the given ones."""

    user_id: int
    sort: str
    order: str
    limit: int
    filters: dict[str, Any]

    def fingerprint(self) -> str:
        """Identifies the listing a cursor belongs to: user, sort, order and filters."""
        canonical = orjson.dumps(
            [self.user_id, self.sort, self.order, sorted(self.filters.items())], default=str
        )
        return hashlib.sha256(canonical).hexdigest()[:32]


async def fetch_page(
    conn: asyncpg.Connection, listing: Listing, after: tuple[str, int] | None
) -> tuple[list[asyncpg.Record], tuple[str, int] | None]:
    """One page of tasks, and the position after its last row when another page follows."""
    values = {**listing.filters, "user_id": listing.user_id, "limit": listing.limit + 1}
    if after is not None:
        values["after_key"], values["after_id"] = after
    given = frozenset(values)
    sql, names = page_statement(listing.sort, listing.order, given)
    arguments = [values[name] for name in names]
    mode = plan_cache_mode(given)
    if mode == "auto":
        rows = await conn.fetch(sql, *arguments)
    else:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            rows = await conn.fetch(sql, *arguments)
    if len(rows) <= listing.limit:
        return rows, None
    last = rows[listing.limit - 1]
    return rows[: listing.limit], (last["sort_key"], last["id"])


async def open_every_task(conn: asyncpg.Connection, listing: Listing) -> asyncpg.cursor.Cursor:
    """A server-side cursor over every task of the listing, in its order, with no LIMIT: its
    rows all come from the one snapshot taken when it opens. Open it inside a transaction."""
    values = {**listing.filters, "user_id": listing.user_id, "limit": None}  # LIMIT NULL: no limit
    given = frozenset(values)
    sql, names = page_statement(listing.sort, listing.order, given)
    mode = plan_cache_mode(given)
    if mode != "auto":
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
    return await conn.cursor(sql, *(values[name] for name in names))


def make_cursor(jwt_secret: str, listing: Listing, after: tuple[str, int]) -> str:
    """An opaque token for the page after `after`, valid only for this same listing. Encrypted,
    not only signed (service/cursors.py): the position is a task's sort key (a lower-cased
    title, a timestamp), which would otherwise be readable in URLs and in proxies' logs."""
    return seal(jwt_secret, f"tasks:{listing.fingerprint()}", list(after))


def read_cursor(jwt_secret: str, listing: Listing, cursor: str) -> tuple[str, int]:
    """The position a cursor holds; 400 if it was altered or made for another listing (user,
    sort, order and filters)."""
    key, task_id = unseal(jwt_secret, f"tasks:{listing.fingerprint()}", cursor)
    return key, task_id
