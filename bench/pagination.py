"""Finding the deep page: walk the heavy user's listing page by page, following `Link: rel="next"`,
and keep the URL of page ~900 for the deep-page scenario to request again and again."""

import asyncio
import dataclasses
import time

import aiohttp
from yarl import URL

PAGE_SIZE = 100
WALK_TIMEOUT_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class DeepPage:
    """The path and query of page `page` (None when the listing has no cursor pagination)."""

    path_and_query: str | None
    page: int
    reason: str = ""
    walk_seconds: float = 0.0


class PaginationError(RuntimeError):
    """A page could not be fetched while walking to the deep page."""


async def _walk(base_url: str, user_id: int, token: str, target_page: int) -> DeepPage:
    base = URL(base_url)
    url = base.with_path(f"/api/{user_id}/tasks").with_query(limit=PAGE_SIZE)
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        for page in range(1, target_page + 1):
            async with session.get(url) as answer:
                if answer.status != 200:
                    raise PaginationError(f"page {page} ({url.path_qs}) answered {answer.status}")
                tasks = await answer.json()
                next_link = answer.links.get("next")
            if page == 1 and (next_link is None or len(tasks) > PAGE_SIZE):
                return DeepPage(None, 0, "no cursor pagination")
            if page == target_page or next_link is None:
                return DeepPage(url.path_qs, page, walk_seconds=time.monotonic() - started)
            # Only the path and query are taken from the link: every request goes to base_url.
            next_url = URL(str(next_link["url"]))
            url = base.with_path(next_url.path).with_query(next_url.query)
    raise AssertionError("unreachable: the loop returns on its last page")


def find_deep_page(base_url: str, user_id: int, token: str, target_page: int) -> DeepPage:
    """Walk to `target_page` (or the last page, if there are fewer) of the user's listing."""
    return asyncio.run(asyncio.wait_for(_walk(base_url, user_id, token, target_page), WALK_TIMEOUT_SECONDS))
