"""What the pages of one phase of one run share: the circuit breaker, and the one failed
batch that holds everything the phase could not send.

A phase is the users phase or the events phase of a `sync-users` run (the webhook drain
uses the same `Breaker` for its run). Its pages are Prefect tasks run one after the other;
each gets the same `Phase`:
- the breaker counts transient failures (each after the HTTP client's whole retry budget)
  across the phase's pages: after `CONSECUTIVE_TRANSIENT_LIMIT` in a row the phase stops;
- the first page that leaves work unsent files a failed batch, and later pages add their
  unsent ids to it, in the same transaction that records the page (so a crash between two
  pages loses nothing): one failed batch per phase per run, not one per page.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from cio_sync.pipeline.breaker import Breaker
from cio_sync.store.failed import add_to_failed_batch, record_failed_batch


@dataclass
class Phase:
    kind: str  # users | events (the failed batch's kind)
    breaker: Breaker = field(default_factory=Breaker)
    failed_batch_id: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def file_unsent(
        self,
        connection: Connection,
        ids_key: str,
        ids: list[str],
        settings: dict[str, Any],
        error: str,
        flow_run_id: str | None,
    ) -> int | None:
        """Saves `ids` in the phase's failed batch (created on first use, in `connection`'s
        transaction). Returns the batch id when this call created it, else None."""
        with self._lock:
            if self.failed_batch_id is not None:
                add_to_failed_batch(connection, self.failed_batch_id, ids_key, ids)
                return None
            # The settings are kept only to tell a rerun what changed since; a rerun applies its own.
            payload = {ids_key: list(dict.fromkeys(ids)), "settings_when_saved": settings}
            self.failed_batch_id = record_failed_batch(connection, self.kind, payload, error, flow_run_id)
            return self.failed_batch_id
