"""What a sync run did, merged page by page, and rendered as the run's table artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from cio_sync.rules.lag import LagHistogram


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class SyncSummary:
    pages: int = 0
    users_seen: int = 0
    decisions: Counter = field(default_factory=Counter)  # insert/update/delete/skip
    skip_reasons: Counter = field(default_factory=Counter)
    failed_users: Counter = field(default_factory=Counter)  # by error kind
    calls: Counter = field(default_factory=Counter)  # identify/delete/event/anonymous_event/batch
    dropped_attributes: Counter = field(default_factory=Counter)  # attribute name -> users
    removed_attributes: Counter = field(default_factory=Counter)  # attribute name -> users (sent as "")
    id_changes: Counter = field(default_factory=Counter)  # on_id_change action -> users
    events: Counter = field(default_factory=Counter)  # sent / failed
    event_skip_reasons: Counter = field(default_factory=Counter)
    # Failed batches retried at the start of the run: resolved / still_open / waiting_for_a_person.
    batch_retries: Counter = field(default_factory=Counter)
    # People `cio-sync resync` asked for, handled at the start of the run (cio_sync/pipeline/resync.py).
    resync: Counter = field(default_factory=Counter)
    segments_left_out: Counter = field(default_factory=Counter)  # users / segments cut from hull_segments
    deletions: Counter = field(default_factory=Counter)  # what the deletion guard did (sent, awaiting approval, ...)
    writeback_sent: int = 0
    writeback_pending: int = 0
    failed_batches: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # first few user errors, for the artifact
    duplicates: list[str] = field(default_factory=list)  # first few `duplicate_id` skips
    warnings: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # why a phase stopped early (breaker, credentials)
    # Freshness: from Hull's indexed_at of each person to Customer.io's acceptance of it.
    freshness: LagHistogram = field(default_factory=LagHistogram)
    # A dry run's sample of the people it would change (cio_sync/pipeline/sync_log.py).
    plan_sample: list[dict[str, Any]] = field(default_factory=list)
    sync_log_pruned: int = 0

    MAX_ERRORS = 20
    MAX_PLAN_SAMPLE = 50

    def merge(self, other: SyncSummary) -> SyncSummary:
        self.pages += other.pages
        self.users_seen += other.users_seen
        for name in (
            "decisions",
            "skip_reasons",
            "failed_users",
            "calls",
            "dropped_attributes",
            "removed_attributes",
            "id_changes",
            "events",
            "event_skip_reasons",
            "batch_retries",
            "resync",
            "segments_left_out",
            "deletions",
        ):
            getattr(self, name).update(getattr(other, name))
        self.writeback_sent += other.writeback_sent
        self.writeback_pending = other.writeback_pending or self.writeback_pending
        self.failed_batches.extend(other.failed_batches)
        self.errors.extend(other.errors[: max(0, self.MAX_ERRORS - len(self.errors))])
        self.duplicates.extend(other.duplicates[: max(0, self.MAX_ERRORS - len(self.duplicates))])
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)
        self.stopped.extend(other.stopped)
        self.freshness.merge(other.freshness)
        self.plan_sample.extend(other.plan_sample[: max(0, self.MAX_PLAN_SAMPLE - len(self.plan_sample))])
        self.sync_log_pruned += other.sync_log_pruned
        return self

    def add_error(self, message: str) -> None:
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(message)

    def add_duplicate(self, message: str) -> None:
        if len(self.duplicates) < self.MAX_ERRORS:
            self.duplicates.append(message)

    @property
    def failed_total(self) -> int:
        return sum(self.failed_users.values())

    def to_dict(self) -> dict[str, Any]:
        # dataclasses.asdict would rebuild each Counter from its items and count the pairs.
        return {
            f.name: dict(value)
            if isinstance(value, Counter)
            else (
                list(value)
                if isinstance(value, list)
                else (value.to_dict() if isinstance(value, LagHistogram) else value)
            )
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }

    def table(self) -> list[dict[str, Any]]:
        """Rows for `create_table_artifact`: one metric per row."""
        rows: list[dict[str, Any]] = [
            {"metric": "pages", "value": self.pages},
            {"metric": "users seen", "value": self.users_seen},
        ]
        for action in ("insert", "update", "delete", "skip"):
            rows.append({"metric": f"decision: {action}", "value": self.decisions.get(action, 0)})
        for action in ("suppress", "unset_segments"):  # only when on_segment_exit makes them
            if self.decisions.get(action):
                rows.append({"metric": f"decision: {action}", "value": self.decisions[action]})
        rows += [{"metric": f"id changed: {k}", "value": v} for k, v in sorted(self.id_changes.items())]
        rows += [{"metric": f"skipped: {k}", "value": v} for k, v in sorted(self.skip_reasons.items())]
        rows += [{"metric": f"failed: {k}", "value": v} for k, v in sorted(self.failed_users.items())]
        rows += [{"metric": f"Customer.io calls: {k}", "value": v} for k, v in sorted(self.calls.items())]
        rows += [{"metric": f"events: {k}", "value": v} for k, v in sorted(self.events.items())]
        rows += [{"metric": f"events skipped: {k}", "value": v} for k, v in sorted(self.event_skip_reasons.items())]
        rows += [{"metric": f"attribute dropped: {k}", "value": v} for k, v in sorted(self.dropped_attributes.items())]
        rows += [{"metric": f"attribute removed: {k}", "value": v} for k, v in sorted(self.removed_attributes.items())]
        rows += [{"metric": f"failed batches retried: {k}", "value": v} for k, v in sorted(self.batch_retries.items())]
        rows += [{"metric": f"resync requests: {k}", "value": v} for k, v in sorted(self.resync.items())]
        if self.segments_left_out:
            rows.append(
                {
                    "metric": "hull_segments shortened to the value limit: users",
                    "value": self.segments_left_out["users"],
                }
            )
            rows.append(
                {"metric": "hull_segments shortened: segments left out", "value": self.segments_left_out["segments"]}
            )
        rows += [{"metric": f"deletions: {k}", "value": v} for k, v in sorted(self.deletions.items())]
        if self.freshness.count:
            for label, fraction in (("p50", 0.5), ("p95", 0.95)):
                rows.append(
                    {
                        "metric": f"freshness {label}: Hull indexed_at → Customer.io accepted",
                        "value": _duration(self.freshness.percentile(fraction)),
                    }
                )
            rows.append(
                {
                    "metric": "freshness max: Hull indexed_at → Customer.io accepted",
                    "value": _duration(self.freshness.max),
                }
            )
        if self.sync_log_pruned:
            rows.append({"metric": "sync log rows pruned", "value": self.sync_log_pruned})
        rows.append({"metric": "Hull write-backs sent", "value": self.writeback_sent})
        rows.append({"metric": "Hull write-backs pending", "value": self.writeback_pending})
        if self.failed_batches:
            rows.append({"metric": "failed batch ids", "value": ", ".join(map(str, self.failed_batches))})
        rows += [{"metric": "stopped", "value": s} for s in self.stopped]
        rows += [{"metric": "warning", "value": w} for w in self.warnings]
        rows += [{"metric": "duplicate id", "value": d} for d in self.duplicates]
        rows += [{"metric": "error", "value": e} for e in self.errors]
        return rows

    def lines(self) -> list[str]:
        return [f"{row['metric']:<40} {row['value']}" for row in self.table()]
