"""Extract: users changed in Hull since the cursor, in keyset pages; segment names."""

from __future__ import annotations

import threading
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
    """Reads the next pages of users from Hull while the current one is being synced.

    The next page's query depends only on the cursor just past the current page, known as
    soon as the current page is read; reading it in a background thread lets Hull's time
    overlap with planning, pushing and writing back the current page instead of adding to it.
    Up to `depth` pages are read ahead, one after the other (each read starts as soon as the
    one before it is in). A page is only used for the cursor it was read from; any other cursor
    reads afresh. Users re-indexed by a write-back may be missed by a read already in flight:
    the next run reads them (they are unchanged, so it sends nothing)."""

    DEPTH = 2

    def __init__(
        self, hull: HullClient, batch_size: int, shard: Shard = WHOLE, until: str | None = None, depth: int = DEPTH
    ):
        self.hull, self.batch_size, self.shard, self.until, self.depth = hull, batch_size, shard, until, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hull-prefetch")
        # Reentrant: a read already done when queued chains the next one in the same thread.
        self._lock = threading.RLock()
        self._ahead: list[tuple[Cursor, Future[UsersPage]]] = []  # oldest first
        self._closed = False

    def _read_after(self, cursor: Cursor) -> None:
        """Queues the read of the page after `cursor` (under the lock), and, once it is in, the
        read of the page after that, while fewer than `depth` pages are ahead."""
        if self._closed or len(self._ahead) >= self.depth:
            return
        future = self._pool.submit(fetch_users_page, self.hull, cursor, self.batch_size, self.shard, self.until)
        self._ahead.append((cursor, future))
        future.add_done_callback(self._chain)

    def _chain(self, future: Future[UsersPage]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        page = future.result()
        if page.users:
            with self._lock:
                if self._ahead and self._ahead[-1][1] is future:
                    self._read_after(page.cursor)

    def fetch(self, cursor: Cursor) -> UsersPage:
        future = None
        with self._lock:
            if self._ahead and self._ahead[0][0] == cursor:
                future = self._ahead.pop(0)[1]
            elif self._ahead:  # another cursor: what was read ahead is of no use
                self._ahead.clear()
        page = future.result() if future is not None else None  # re-raises the read's error
        if page is None:
            page = fetch_users_page(self.hull, cursor, self.batch_size, self.shard, self.until)
        if page.users:
            with self._lock:
                if not self._ahead:
                    self._read_after(page.cursor)
                elif self._ahead[-1][1].done() and not self._ahead[-1][1].exception():
                    last = self._ahead[-1][1].result()
                    if last.users:
                        self._read_after(last.cursor)
        return page

    def next_users(self) -> Callable[[], list[dict[str, Any]] | None]:
        """A function that waits for the next page read ahead (if any) and returns its users:
        the list the next `fetch` returns, if it is called with the cursor it was read from."""
        with self._lock:
            ahead = self._ahead[0] if self._ahead else None

        def users() -> list[dict[str, Any]] | None:
            if ahead is None:
                return None
            try:
                return ahead[1].result().users
            except Exception:  # the next `fetch` re-raises it
                return None

        return users

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ahead.clear()
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
