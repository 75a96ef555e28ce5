"""The decision table, vectorised over one page of users with pandas. Pure: no I/O.

Order (from the original connector, plus `invalid_id`, `rejected_unchanged` and `malformed`):
 1. no email                                         → skip  no_email
 2. not in segments, deletion off                     → skip  not_in_segments
 3. not in segments, deletion on, created, not deleted → delete
 4. not in segments, deletion on, never created        → skip  not_in_segments
 5. not in segments, deletion on, already deleted      → skip  already_deleted
 6. no value for the mapped id                         → skip  no_id_value
 7. id value breaks the identifier limit               → skip  invalid_id
 7b. same attribute hash as Customer.io last rejected  → skip  rejected_unchanged
     with a 400 (a 400 will not succeed as it is; the user is tried again when a
     synchronized attribute changes)
 8. never created (or deleted since)                   → insert
 9. same attribute hash as the last sync               → skip  unchanged
10. otherwise                                          → update
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INSERT, UPDATE, DELETE, SKIP = "insert", "update", "delete", "skip"

PAGE_COLUMNS = ["hull_id", "has_email", "in_segments", "has_id", "id_valid", "attributes_hash"]
STATE_COLUMNS = ["hull_id", "state_created", "state_deleted", "state_hash"]
REJECTED_COLUMN = "state_rejected_hash"  # optional in `state`: the hash Customer.io last rejected (400)


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
    if REJECTED_COLUMN in frame:
        rejected = frame[REJECTED_COLUMN].notna() & (frame[REJECTED_COLUMN] == frame["attributes_hash"])
    else:
        rejected = pd.Series(False, index=frame.index)

    conditions = [
        ~has_email,
        out & (not enable_user_deletion),
        out & live,
        out & ~created,
        out & deleted,
        ~frame["has_id"].astype(bool),
        ~frame["id_valid"].astype(bool),
        rejected,
        ~live,
        unchanged,
    ]
    actions = [SKIP, SKIP, DELETE, SKIP, SKIP, SKIP, SKIP, SKIP, INSERT, SKIP]
    reasons = ["no_email", "not_in_segments", "", "not_in_segments", "already_deleted",
               "no_id_value", "invalid_id", "rejected_unchanged", "", "unchanged"]
    frame["action"] = np.select(conditions, actions, default=UPDATE)
    frame["reason"] = np.select(conditions, reasons, default="")
    return frame
