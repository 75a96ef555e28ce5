"""Extract: users changed in Hull since the cursor, in keyset pages; segment names."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cio_sync.rules.mapping import resolve_segments
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import Segments
from cio_sync.store.cursors import Cursor
from connectors.hull import MAX_PER_PAGE, HullClient


def users_query(cursor: Cursor, until: str | None = None) -> tuple[list[dict], list[dict]]:
    """Keyset pagination on `indexed_at`: always page 1 of `indexed_at >= position`, excluding
    the ids already handled at exactly `position`. Offsets are never used, because write-backs
    re-index users during the walk and would shift every later page. `until` bounds the walk
    to users indexed by then (see `walk_bound`)."""
    bound = [{"range": {"indexed_at": {"lte": until}}}] if until else []
    if not cursor.position:
        return bound, []
    return ([{"range": {"indexed_at": {"gte": cursor.position}}}, *bound], seen_at_position(cursor, "indexed_at", "id"))


def walk_bound(hull: HullClient) -> str | None:
    """The latest `indexed_at` in Hull when the run starts, on Hull's own clock: the run reads
    users up to there. Users re-indexed during the run (among them every user this run writes
    back, whose only change is the connector's own `customerio/*` traits) are read by the next
    run; without the bound the run chases its own write-backs and reads each synced user twice,
    and a workspace changing faster than the sync would never let a run end."""
    data = hull.search_users([], page=1, per_page=1, order="desc")["data"]
    return data[0].get("indexed_at") if data else None


def seen_at_position(cursor: Cursor, time_field: str, id_field: str) -> list[dict]:
    """Excludes the ids handled at exactly the cursor's timestamp, and only there: a user
    re-indexed later must be found again."""
    if not cursor.seen_ids:
        return []
    return [
        {
            "bool": {
                "filter": [
                    {"terms": {id_field: sorted(cursor.seen_ids)}},
                    {"range": {time_field: {"gte": cursor.position, "lte": cursor.position}}},
                ]
            }
        }
    ]


@dataclass
class UsersPage:
    users: list[dict[str, Any]]
    cursor: Cursor  # just past `users`
    # Hull's `pagination.total` of the page's first search: users left at or after the start
    # cursor, this page's included (None when Hull does not say). Progress reporting only.
    remaining: int | None = None


def fetch_users_page(
    hull: HullClient, cursor: Cursor, batch_size: int, shard: Shard = WHOLE, until: str | None = None
) -> UsersPage:
    """Up to `batch_size` users after `cursor`, the cursor just past them, and how many are left.

    With a `shard`, only that shard's users are returned. Hull cannot filter on a hash, so
    every user is still read: the cursor advances over all of them, other shards' included
    (or the walk would stall on them), and stops right after the last user returned."""
    users: list[dict[str, Any]] = []
    remaining: int | None = None
    while len(users) < batch_size:
        filters, must_not = users_query(cursor, until)
        # A shard keeps about 1/count of what it reads: read enough to fill the batch.
        per_page = min(MAX_PER_PAGE, (batch_size - len(users)) * shard.count)
        response = hull.search_users(filters, page=1, per_page=per_page, must_not=must_not)
        data = response["data"]
        if remaining is None:
            total = (response.get("pagination") or {}).get("total")
            remaining = total if isinstance(total, int) else None
        fresh = [u for u in data if not (u.get("indexed_at") == cursor.position and u.get("id") in cursor.seen_ids)]
        if not fresh:
            break
        read: list[dict[str, Any]] = []
        for user in fresh:
            read.append(user)
            if shard.owns(user.get("id")):
                users.append(user)
                if len(users) == batch_size:
                    break
        next_cursor = cursor.advanced([u for u in read if u.get("indexed_at") and u.get("id")], "indexed_at", "id")
        # Users without `indexed_at`/`id` cannot move the cursor: reading on would return them again.
        stuck = next_cursor == cursor
        cursor = next_cursor
        if len(data) < per_page or stuck:
            break
    return UsersPage(users, cursor, remaining)


class UserPagePrefetcher:
    """Reads the next page of users from Hull while the current one is being synced.

    The next page's query depends only on the cursor just past the current page, known as
    soon as the current page is read; reading it in a background thread lets Hull's time
    overlap with planning, pushing and writing back the current page instead of adding to it.
    A page is only used for the cursor it was read from; any other cursor reads afresh.
    Users re-indexed by the current page's write-back may be missed by the read already in
    flight: the next run reads them (they are unchanged, so it sends nothing)."""

    def __init__(self, hull: HullClient, batch_size: int, shard: Shard = WHOLE, until: str | None = None):
        self.hull, self.batch_size, self.shard, self.until = hull, batch_size, shard, until
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hull-prefetch")
        self._ahead: tuple[Cursor, Future] | None = None

    def fetch(self, cursor: Cursor) -> UsersPage:
        page = None
        if self._ahead is not None:
            ahead_cursor, future = self._ahead
            self._ahead = None
            if ahead_cursor == cursor:
                page = future.result()  # re-raises the read's error (AuthError stops the run)
        if page is None:
            page = fetch_users_page(self.hull, cursor, self.batch_size, self.shard, self.until)
        if page.users:
            self._ahead = (
                page.cursor,
                self._pool.submit(fetch_users_page, self.hull, page.cursor, self.batch_size, self.shard, self.until),
            )
        return page

    def next_users(self) -> Callable[[], list[dict[str, Any]] | None]:
        """A function that waits for the read ahead (if any) and returns its users: the list
        the next `fetch` returns, if it is called with the cursor it was read from."""
        ahead = self._ahead

        def users() -> list[dict[str, Any]] | None:
            if ahead is None:
                return None
            try:
                page: UsersPage = ahead[1].result()
            except Exception:  # the next `fetch` re-raises it
                return None
            return page.users

        return users

    def close(self) -> None:
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def resolve_run_segments(hull: HullClient, synchronized_segments: list[str]) -> Segments:
    """Segment names (for `hull_segments`) and the whitelisted ids, resolved once per run."""
    segments = hull.segments()
    whitelisted, unknown = resolve_segments(synchronized_segments, segments)
    return Segments(
        names={s["id"]: s.get("name") or s["id"] for s in segments},
        whitelisted_ids=frozenset(whitelisted),
        unknown=tuple(unknown),
    )
