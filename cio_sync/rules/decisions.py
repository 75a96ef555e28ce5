"""The decision table, vectorised over one page of users with pandas. Pure: no I/O.

Order (from the original connector, plus `invalid_id`, `rejected_unchanged`, `malformed`, the
segment-exit actions and update-only mode). "Live": created in Customer.io and not deleted (or suppressed) since.
 1. no email                                                  → skip  no_email
 2. not in segments, on_segment_exit=keep                      → skip  not_in_segments
 3. not in segments, live, on_segment_exit=delete              → delete
 4. not in segments, live, on_segment_exit=suppress            → suppress
 5. not in segments, live, on_segment_exit=unset_segments, not yet unset → unset_segments
 6. not in segments, otherwise never created or already unset  → skip  not_in_segments
 7. not in segments, suppressed                                → skip  already_suppressed
 8. not in segments, already deleted                           → skip  already_deleted
 9. no value for the mapped id                                 → skip  no_id_value
10. id value breaks the identifier limit                       → skip  invalid_id
11. not live, sync_mode=update_only                            → skip  not_in_customerio
12. never created (or deleted or suppressed since)             → insert
13. same attribute hash as the last sync                       → skip  unchanged
14. otherwise                                                  → update

15. an insert or update whose Customer.io id another user already holds (a live person in
    state, or an earlier user of the same page)                → skip  duplicate_id (`mark_duplicate_ids`)

`enable_user_deletion` is on_segment_exit `delete` (true) or `keep` (false).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

INSERT, UPDATE, DELETE, SKIP = "insert", "update", "delete", "skip"
SUPPRESS, UNSET_SEGMENTS = "suppress", "unset_segments"
SEGMENT_EXITS = ("keep", "delete", "suppress", "unset_segments")

PAGE_COLUMNS = ["hull_id", "has_email", "in_segments", "has_id", "id_valid", "attributes_hash"]
STATE_COLUMNS = ["hull_id", "state_created", "state_deleted", "state_hash"]
# Optional state columns (False when absent): suppressed since the last insert; segments
# already unset (on_segment_exit=unset_segments sent `hull_segments` empty).
OPTIONAL_STATE_COLUMNS = ["state_suppressed", "state_unset"]
REJECTED_COLUMN = "state_rejected_hash"  # optional in `state`: the hash Customer.io last rejected (400)


def decide(
    page: pd.DataFrame, state: pd.DataFrame, on_segment_exit: str | bool, update_only: bool = False
) -> pd.DataFrame:
    """`page` has PAGE_COLUMNS (one row per user), `state` has STATE_COLUMNS and maybe
    OPTIONAL_STATE_COLUMNS (rows for known users only). `on_segment_exit` is one of
    SEGMENT_EXITS, or a bool for `enable_user_deletion`. Returns `page` with `action` and
    `reason` columns added."""
    if isinstance(on_segment_exit, bool):
        on_segment_exit = "delete" if on_segment_exit else "keep"
    if on_segment_exit not in SEGMENT_EXITS:
        raise ValueError(f"on_segment_exit must be one of {SEGMENT_EXITS}, not {on_segment_exit!r}")
    frame = page.merge(state, on="hull_id", how="left")
    created = frame["state_created"].fillna(False).astype(bool)
    deleted = frame["state_deleted"].fillna(False).astype(bool)
    suppressed, unset = (
        frame[c].fillna(False).astype(bool) if c in frame else pd.Series(False, index=frame.index)
        for c in OPTIONAL_STATE_COLUMNS
    )
    live = created & ~deleted
    out = ~frame["in_segments"].astype(bool)
    has_email = frame["has_email"].astype(bool)
    unchanged = frame["state_hash"].notna() & (frame["state_hash"] == frame["attributes_hash"])
    if REJECTED_COLUMN in frame:
        rejected = frame[REJECTED_COLUMN].notna() & (frame[REJECTED_COLUMN] == frame["attributes_hash"])
    else:
        rejected = pd.Series(False, index=frame.index)

    rules = [
        (~has_email, SKIP, "no_email"),
        (out & (on_segment_exit == "keep"), SKIP, "not_in_segments"),
        (out & live & (on_segment_exit == "delete"), DELETE, ""),
        (out & live & (on_segment_exit == "suppress"), SUPPRESS, ""),
        (out & live & (on_segment_exit == "unset_segments") & ~unset, UNSET_SEGMENTS, ""),
        (out & (~created | live), SKIP, "not_in_segments"),
        (out & suppressed, SKIP, "already_suppressed"),
        (out & deleted, SKIP, "already_deleted"),
        (~frame["has_id"].astype(bool), SKIP, "no_id_value"),
        (~frame["id_valid"].astype(bool), SKIP, "invalid_id"),
        (rejected, SKIP, "rejected_unchanged"),
        (~live & update_only, SKIP, "not_in_customerio"),
        (~live, INSERT, ""),
        (unchanged, SKIP, "unchanged"),
    ]
    conditions = [condition for condition, _, _ in rules]
    frame["action"] = np.select(conditions, [action for _, action, _ in rules], default=UPDATE)
    frame["reason"] = np.select(conditions, [reason for _, _, reason in rules], default="")
    return frame


def mark_duplicate_ids(decided: pd.DataFrame, cio_ids: list[str | None], holders: Mapping[str, str]) -> pd.DataFrame:
    """Rule 11, after `decide`: two Hull users are never sent as one Customer.io person.

    `cio_ids` are the page's mapped ids, in the row order of `decided`; `holders` maps ids to
    the Hull user holding them in state (live people only). The holder keeps its id, and so
    does the first user of the page to claim an id nobody holds. A holder that this page
    sends under another id is moving away from the old one, which is then free."""
    hull_ids = list(decided["hull_id"])
    sending = list(decided["action"].isin([INSERT, UPDATE]))
    moving = {h: c for h, c, s in zip(hull_ids, cio_ids, sending) if s}
    claimed: set[str] = set()
    duplicate = []
    for hull_id, cio_id, is_sending in zip(hull_ids, cio_ids, sending):
        if not is_sending or cio_id is None:
            duplicate.append(False)
            continue
        holder = holders.get(cio_id)
        taken = holder is not None and holder != hull_id and moving.get(holder, cio_id) == cio_id
        is_duplicate = taken or cio_id in claimed
        duplicate.append(is_duplicate)
        if not is_duplicate:
            claimed.add(cio_id)
    mask = np.array(duplicate, dtype=bool)
    if not mask.any():
        return decided
    decided = decided.copy()
    decided.loc[mask, "action"] = SKIP
    decided.loc[mask, "reason"] = "duplicate_id"
    return decided
