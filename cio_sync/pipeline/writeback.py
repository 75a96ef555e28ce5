"""Write-back: tell Hull what the sync did, as `customerio/*` traits through the firehose.

State rows carry `writeback_pending` from the moment Customer.io accepted a change until
Hull accepted the traits, so a Hull outage delays write-backs but never loses them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from cio_sync.store.db import as_utc
from cio_sync.store.sync_log import mark_written_back
from cio_sync.store.users import clear_writeback_pending, pending_writebacks
from connectors.http import PermanentError, TransientError
from connectors.hull import HullClient, iso


def _iso(value: datetime | None) -> str | None:
    utc = as_utc(value)
    return iso(utc) if utc is not None else None


def traits_for(row: dict[str, Any]) -> dict[str, Any]:
    if row["deleted_at"] is not None:
        return {
            "customerio/id": None,
            "customerio/created_at": None,
            "customerio/synced_at": None,
            "customerio/deleted_at": _iso(row["deleted_at"]),
        }
    return {
        "customerio/id": row["cio_id"],
        "customerio/created_at": _iso(row["created_at"]),
        "customerio/synced_at": _iso(row["synced_at"]),
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
    """Sends pending write-backs: of every id in `hull_ids` (a page of any size), `limit` rows
    at a time; without `hull_ids`, of the first `limit` pending rows (the catch-up at the start
    of a run). Returns (sent, error); on a Hull failure that chunk and the ones after it stay
    pending for the next run."""
    if hull_ids is None:
        return _write_back_rows(hull, engine, user_id_mapping, pending_writebacks(engine, limit))
    sent = 0
    for start in range(0, len(hull_ids), limit):
        chunk = hull_ids[start : start + limit]
        done, error = _write_back_rows(hull, engine, user_id_mapping, pending_writebacks(engine, len(chunk), chunk))
        sent += done
        if error:
            after = len(hull_ids) - start - len(chunk)
            return sent, error + (f" (with the {after} users after them)" if after else "")
    return sent, None


def _write_back_rows(
    hull: HullClient, engine: Engine, user_id_mapping: str, rows: list[dict[str, Any]]
) -> tuple[int, str | None]:
    if not rows:
        return 0, None
    messages = [hull.traits_message(hull_claims(r, user_id_mapping), traits_for(r), r["hull_id"]) for r in rows]
    hull_ids = [r["hull_id"] for r in rows]
    try:
        hull.firehose(messages)
    except (TransientError, PermanentError) as exc:
        mark_written_back(engine, hull_ids, error=str(exc))
        return 0, f"Hull write-back of {len(rows)} users postponed: {exc}"
    clear_writeback_pending(engine, rows)
    mark_written_back(engine, hull_ids)  # the sync log's rows of these people: written back
    return len(rows), None


class WriteBackPipeline:
    """Sends each page's write-back from a background thread while the flow syncs the next
    page, so Hull's time (signing and verifying a token per user) overlaps with Customer.io's
    instead of adding to it. At most one page is in flight: `submit` first collects the
    previous page's result. Rows stay `writeback_pending` until Hull accepted them, exactly as
    with the synchronous `write_back`, so a crash loses nothing. AuthError surfaces at the
    next `submit` or at `drain`."""

    def __init__(self, hull: HullClient, engine: Engine, user_id_mapping: str):
        self.hull, self.engine, self.user_id_mapping = hull, engine, user_id_mapping
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hull-writeback")
        self._in_flight: Future | None = None
        self.sent = 0
        self.errors: list[str] = []

    def submit(self, hull_ids: list[str]) -> None:
        self._collect()
        self._in_flight = self._pool.submit(write_back, self.hull, self.engine, self.user_id_mapping, hull_ids=hull_ids)

    def drain(self) -> tuple[int, list[str]]:
        """Waits for the last page; returns (sent, errors) of every page submitted."""
        try:
            self._collect()
        finally:
            self._pool.shutdown(wait=True)
        return self.sent, self.errors

    def _collect(self) -> None:
        future, self._in_flight = self._in_flight, None
        if future is not None:
            sent, error = future.result()
            self.sent += sent
            if error:
                self.errors.append(error)
