"""Splitting the user sync into shards that run side by side on different workers.

A user belongs to exactly one shard, decided by a stable hash of its Hull id: the same id
lands in the same shard in every process, on every machine and across restarts (Python's
`hash()` is salted per process, so it must never be used here). Each shard keeps its own
cursors, so shards never move each other's watermarks; the per-user state and `event_state`
tables are shared and unaffected by the shard layout. So changing `shard_count` sends nothing
twice: the new shards rescan Hull's users once (skipping every user whose attributes did not
change), and their events walks start where the previous layout had got to
(cio_sync/pipeline/watermarks.py), never at `events_start`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


def shard_of(key: str, shard_count: int) -> int:
    """The shard owning `key`: the first 8 bytes of its SHA-1, big-endian, modulo the count.

    SHA-1 is used for its spread and because every language and database can reproduce it;
    nothing here is security-sensitive.
    """
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based). `Shard(0, 1)` is the whole, unsharded stream."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard_count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard_index must be in 0..{self.count - 1}, got {self.index}")

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def owns(self, hull_id: Any) -> bool:
        """Whether this shard handles the user with Hull id `hull_id`."""
        if self.is_whole:
            return True
        return shard_of(str(hull_id or ""), self.count) == self.index

    def owns_event(self, event: dict[str, Any]) -> bool:
        """Events follow their user, so a user's events go out after its identify calls on
        the same shard; an event without a user falls back to its own id, so it is still
        handled by exactly one shard."""
        return self.owns(event.get("user_id") or event.get("event_id") or event.get("_id") or "")

    def cursor_name(self, stream: str) -> str:
        """`users` stays `users` unsharded (existing installations keep their watermark);
        shards get `users:shard:<index>/<count>`, so a new layout starts its own cursors (an
        events cursor of a new layout starts from the previous layout's)."""
        return stream if self.is_whole else f"{stream}:shard:{self.index}/{self.count}"

    def label(self) -> str:
        return "all users" if self.is_whole else f"shard {self.index + 1} of {self.count}"

    def writer_scope(self) -> str:
        """The users this run may write, as a lease name (cio_sync/store/lease.py)."""
        return WHOLE_SCOPE if self.is_whole else f"users:shard:{self.index}/{self.count}"


WHOLE = Shard()
# Every writer of user state takes one lease named by the users it writes: `users:all` (the
# unsharded sync, rerun-failed-batches, backfill-events), `users:shard:<i>/<n>` (one shard) or
# `users:layout:<n>` (the sharded parent, while its n shards run). Two leases whose user sets
# may meet exclude each other (`scopes_overlap`).
WHOLE_SCOPE = "users:all"


def layout_scope(count: int) -> str:
    """The sharded parent's lease: excludes every other writer except the shards of its own layout."""
    return f"users:layout:{count}"


def _parse_scope(scope: str) -> tuple[str, int, int] | None:
    """("shard", index, count), ("layout", 0, count), or None for a name that is no users scope."""
    if scope == WHOLE_SCOPE:
        return ("shard", 0, 1)
    parts = scope.split(":")
    try:
        if len(parts) == 3 and parts[:2] == ["users", "layout"]:
            return ("layout", 0, int(parts[2]))
        if len(parts) == 3 and parts[:2] == ["users", "shard"]:
            index, count = parts[2].split("/")
            return ("shard", int(index), int(count))
    except ValueError:
        return None
    return None


def scopes_overlap(a: str, b: str) -> bool:
    """Whether writers holding leases `a` and `b` could write the same user.

    Shards of one layout own disjoint users; shards of different layouts share users; a
    layout lease (the parent of n shards) overlaps everything but its own layout's shards; two
    layout leases always overlap (two sharded runs at once). Names that are not users scopes
    only overlap themselves."""
    if a == b:
        return True
    first, second = _parse_scope(a), _parse_scope(b)
    if first is None or second is None:
        return False
    (kind_a, index_a, count_a), (kind_b, index_b, count_b) = first, second
    if kind_a == kind_b == "shard":
        return count_a != count_b or index_a == index_b
    if kind_a == kind_b == "layout":
        return True
    return count_a != count_b


def cursor_layout(name: str, stream: str) -> int | None:
    """The shard count of a cursor of `stream` (`events` → 1, `events:shard:2/4` → 4), or None."""
    if name == stream:
        return 1
    prefix = f"{stream}:shard:"
    if not name.startswith(prefix):
        return None
    try:
        return int(name[len(prefix) :].split("/")[1])
    except (IndexError, ValueError):
        return None
