"""Extract: users changed in Hull since the cursor, in keyset pages; segment names."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.state import Cursor
from connectors.hull import MAX_PER_PAGE, HullClient


def users_query(cursor: Cursor) -> tuple[list[dict], list[dict]]:
    """Keyset pagination on `indexed_at`: always page 1 of `indexed_at >= position`, excluding
    the ids already handled at exactly `position`. Offsets are never used, because write-backs
    re-index users during the walk and would shift every later page."""
    if not cursor.position:
        return [], []
    return [{"range": {"indexed_at": {"gte": cursor.position}}}], seen_at_position(cursor, "indexed_at", "id")


def seen_at_position(cursor: Cursor, time_field: str, id_field: str) -> list[dict]:
    """Excludes the ids handled at exactly the cursor's timestamp, and only there: a user
    re-indexed later must be found again."""
    if not cursor.seen_ids:
        return []
    return [{"bool": {"filter": [
        {"terms": {id_field: sorted(cursor.seen_ids)}},
        {"range": {time_field: {"gte": cursor.position, "lte": cursor.position}}},
    ]}}]


def fetch_users_batch(hull: HullClient, cursor: Cursor, batch_size: int) -> tuple[list[dict[str, Any]], Cursor]:
    """Up to `batch_size` users after `cursor`, and the cursor just past them."""
    users: list[dict[str, Any]] = []
    while len(users) < batch_size:
        filters, must_not = users_query(cursor)
        per_page = min(MAX_PER_PAGE, batch_size - len(users))
        data = hull.search_users(filters, page=1, per_page=per_page, must_not=must_not)["data"]
        fresh = [u for u in data if not (u.get("indexed_at") == cursor.position and u.get("id") in cursor.seen_ids)]
        if not fresh:
            break
        users.extend(fresh)
        cursor = cursor.advanced([u for u in fresh if u.get("indexed_at") and u.get("id")], "indexed_at", "id")
        if len(data) < per_page:
            break
    return users, cursor


@task(name="fetch-users", cache_policy=NO_CACHE)
def fetch_users_task(hull: HullClient, cursor: Cursor, batch_size: int):
    return fetch_users_batch(hull, cursor, batch_size)


def segment_names(hull: HullClient) -> dict[str, str]:
    return {segment["id"]: segment.get("name") or segment["id"] for segment in hull.segments()}
