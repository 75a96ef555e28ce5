"""Write-back: tell Hull what the sync did, as `customerio/*` traits through the firehose.

State rows carry `writeback_pending` from the moment Customer.io accepted a change until
Hull accepted the traits, so a Hull outage delays write-backs but never loses them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from cio_sync.db import as_utc
from cio_sync.state import clear_writeback_pending, pending_writebacks
from connectors.hull import HullClient, iso
from connectors.http import PermanentError, TransientError


def traits_for(row: dict[str, Any]) -> dict[str, Any]:
    if row["deleted_at"] is not None:
        return {
            "customerio/id": None,
            "customerio/created_at": None,
            "customerio/synced_at": None,
            "customerio/deleted_at": iso(as_utc(row["deleted_at"])),
        }
    return {
        "customerio/id": row["cio_id"],
        "customerio/created_at": iso(as_utc(row["created_at"])) if row["created_at"] else None,
        "customerio/synced_at": iso(as_utc(row["synced_at"])) if row["synced_at"] else None,
        "customerio/deleted_at": None,
    }


def hull_claims(row: dict[str, Any], user_id_mapping: str) -> dict[str, Any]:
    """The original wrote as the user's external_id when that is the mapped id, else the Hull id."""
    if user_id_mapping == "external_id" and row.get("cio_id"):
        return {"external_id": row["cio_id"]}
    return {"id": row["hull_id"]}


def write_back(
    hull: HullClient, engine: Engine, user_id_mapping: str, hull_ids: list[str] | None = None, limit: int = 1000
) -> tuple[int, str | None]:
    """Sends pending write-backs (of `hull_ids`, or the oldest `limit` of all).
    Returns (sent, error); on a Hull failure the rows stay pending for the next run."""
    rows = pending_writebacks(engine, limit, hull_ids)
    if not rows:
        return 0, None
    messages = [hull.traits_message(hull_claims(r, user_id_mapping), traits_for(r), r["hull_id"]) for r in rows]
    try:
        hull.firehose(messages)
    except (TransientError, PermanentError) as exc:
        return 0, f"Hull write-back of {len(rows)} users postponed: {exc}"
    clear_writeback_pending(engine, rows)
    return len(rows), None
