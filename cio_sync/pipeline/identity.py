"""A change of `user_id_mapping` itself changes every user's Customer.io id at once: a
migration. A run refuses it unless `migrate_ids` is set; with it, the users stream is walked
again from its first user, and each user's id change is handled by `on_id_change` (merge by
default) page by page like any other id change (cio_sync/rules/plan.py)."""

from __future__ import annotations

from dataclasses import dataclass

from cio_sync.runtime import SyncRuntime
from cio_sync.store.identity import read_stream_mapping, record_stream_mapping, start_id_migration


class IdMappingChanged(Exception):
    """The mapping differs from the stream's last run and no migration was asked for."""

    def __init__(self, previous: str, current: str):
        self.previous, self.current = previous, current
        super().__init__(
            f"user_id_mapping changed from {previous!r} to {current!r} since the last run: every person's "
            "Customer.io id would change, so nothing was sent. To move every person to its new id "
            "(on_id_change: merge the old person into the new one, or delete_old), run again with "
            "`cio-sync sync-users --migrate-ids` (flow parameter migrate_ids=true); or set "
            f"user_id_mapping back to {previous!r}."
        )


@dataclass(frozen=True)
class IdMappingCheck:
    warning: str | None = None  # said in the run summary when a migration starts
    walk_from_start: bool = False  # a dry-run migration reads every user without resetting anything


def check_id_mapping(runtime: SyncRuntime, stream: str, migrate_ids: bool) -> IdMappingCheck:
    """Raises IdMappingChanged when the mapping changed and `migrate_ids` is not set. A
    stream seen for the first time (or first since this check exists) records its mapping."""
    current = runtime.settings.user_id_mapping
    previous = read_stream_mapping(runtime.engine, stream)
    if previous == current:
        return IdMappingCheck()
    if previous is None:
        if not runtime.dry_run:
            record_stream_mapping(runtime.engine, stream, current)
        return IdMappingCheck()
    if not migrate_ids:
        raise IdMappingChanged(previous, current)
    warning = (
        f"user_id_mapping changed from {previous!r} to {current!r}: migrating every id "
        f"(on_id_change={runtime.settings.on_id_change}), reading every user again from the first"
    )
    if runtime.dry_run:
        return IdMappingCheck(f"dry run: {warning}", walk_from_start=True)
    start_id_migration(runtime.engine, stream, previous, current)
    return IdMappingCheck(warning)
