"""The decision table, vectorised over one page of users with pandas. Pure: no I/O.

Order (from the original connector, plus `invalid_id` and `malformed`):
 1. no email                                         → skip  no_email
 2. not in segments, deletion off                     → skip  not_in_segments
 3. not in segments, deletion on, created, not deleted → delete
 4. not in segments, deletion on, never created        → skip  not_in_segments
 5. not in segments, deletion on, already deleted      → skip  already_deleted
 6. no value for the mapped id                         → skip  no_id_value
 7. id value breaks the identifier limit               → skip  invalid_id
 8. never created (or deleted since)                   → insert
 9. same attribute hash as the last sync               → skip  unchanged
10. otherwise                                          → update
11. an insert or update whose Customer.io id another user already holds (a live person in
    state, or an earlier user of the same page)       → skip  duplicate_id (`mark_duplicate_ids`)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

INSERT, UPDATE, DELETE, SKIP = "insert", "update", "delete", "skip"

PAGE_COLUMNS = ["hull_id", "has_email", "in_segments", "has_id", "id_valid", "attributes_hash"]
STATE_COLUMNS = ["hull_id", "state_created", "state_deleted", "state_hash"]


def decide(page: pd.DataFrame, state: pd.DataFrame, enable_user_deletion: bool) -> pd.DataFrame:
    """`page` has PAGE_COLUMNS (one row per user), `state` has STATE_COLUMNS (rows for known
    users only). Returns `page` with `action` and `reason` columns added."""
    frame = page.merge(state, on="hull_id", how="left")
    created = frame["state_created"].fillna(False).astype(bool)
    deleted = frame["state_deleted"].fillna(False).astype(bool)
    live = created & ~deleted
    out = ~frame["in_segments"].astype(bool)
    has_email = frame["has_email"].astype(bool)
    unchanged = frame["state_hash"].notna() & (frame["state_hash"] == frame["attributes_hash"])

    conditions = [
        ~has_email,
        out & (not enable_user_deletion),
        out & live,
        out & ~created,
        out & deleted,
        ~frame["has_id"].astype(bool),
        ~frame["id_valid"].astype(bool),
        ~live,
        unchanged,
    ]
    actions = [SKIP, SKIP, DELETE, SKIP, SKIP, SKIP, SKIP, INSERT, SKIP]
    reasons = ["no_email", "not_in_segments", "", "not_in_segments", "already_deleted",
               "no_id_value", "invalid_id", "", "unchanged"]
    frame["action"] = np.select(conditions, actions, default=UPDATE)
    frame["reason"] = np.select(conditions, reasons, default="")
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
