"""The start of a sync run: send again the people `cio-sync resync` asked for.

The users stream is incremental (Hull's `indexed_at`), so a person Hull does not re-index
would never be read again: the requested people are fetched from Hull by id (as a rerun of a
failed batch does), their stored attribute hashes cleared, and each chunk diffed and pushed
like any page; being "changed", every one still in a synchronized segment is identified again.

A resync never deletes anybody: people no longer in a synchronized segment are left out of
the pass (the users stream decides them as usual, under the deletion guard), and the settings
of the pass keep everyone who would leave (`on_segment_exit=keep`). A chunk Customer.io did
not fully accept keeps its requests for the next run; the pass stops there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import PageIncomplete, sync_page
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime
from cio_sync.store.failed import USERS
from cio_sync.store.resync import count_resync_requests, finish_resync, forget_sent_state, pending_resync


def _in_synchronized_segments(user: Any, whitelisted: frozenset[str]) -> bool:
    segments = user.get("segment_ids") if isinstance(user, dict) else None
    return isinstance(segments, list) and any(s in whitelisted for s in segments)


def resync_requested(runtime: SyncRuntime, run_id: str | None, shard: Shard = WHOLE) -> SyncSummary:
    """Handles this shard's resync requests, `users_per_batch` at a time. AuthError propagates."""
    summary = SyncSummary()
    if runtime.dry_run:
        waiting = count_resync_requests(runtime.engine)
        if waiting:
            summary.warnings.append(f"{waiting} people wait for a resync: a dry run does not send them")
        return summary
    if not runtime.whitelisted_segment_ids:
        return summary
    keep = replace(
        runtime, settings=runtime.settings.model_copy(update={"on_segment_exit": "keep", "enable_user_deletion": False})
    )
    after = ""
    while True:
        chunk = pending_resync(runtime.engine, after, runtime.settings.users_per_batch)
        if not chunk:
            break
        after = chunk[-1].hull_id
        mine = [r for r in chunk if shard.owns(r.hull_id)]
        if not mine:
            continue
        ids = [r.hull_id for r in mine]
        users = runtime.hull.users_by_ids(ids)
        found = {u.get("id") for u in users if isinstance(u, dict)}
        unfound = sum(1 for i in ids if i not in found)
        if unfound:
            summary.resync["not found in Hull"] += unfound
        in_segments = [u for u in users if _in_synchronized_segments(u, runtime.whitelisted_segment_ids)]
        if len(users) > len(in_segments):
            summary.resync["left to the users stream: not in a synchronized segment"] += len(users) - len(in_segments)
        forget_sent_state(runtime.engine, [u["id"] for u in in_segments])
        try:
            result = sync_page(
                keep, in_segments, cursor_name="", next_cursor=None, flow_run_id=run_id, phase=Phase(USERS)
            )
        except PageIncomplete as exc:
            exc.summary.pages = 0
            summary.merge(exc.summary)
            summary.resync["kept for the next run"] += len(mine)
            summary.warnings.append(f"resync stopped, its requests are kept for the next run: {exc}")
            break
        result.pages = 0  # not pages of the users stream
        summary.merge(result)
        unsent = result.failed_users.get("transient", 0) + result.failed_users.get("not_attempted", 0)
        if unsent:
            summary.resync["kept for the next run"] += len(mine)
            summary.warnings.append(
                f"resync: {unsent} requested people could not be sent (Customer.io failing); "
                "their chunk's requests are kept for the next run"
            )
            break
        summary.resync["handled"] += len(in_segments)
        finish_resync(runtime.engine, mine)
    return summary
