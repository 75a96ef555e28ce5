"""The sync log's rows, the dry run's plan sample and its markdown, and the freshness
histogram (pure: plans and outcomes built here, a recording fake client, no HTTP, no DB)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

from cio_sync.pipeline.push import UserOutcome, push_page
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.sync_log import PLANNED_DELETE, log_rows, plan_markdown, plan_sample
from cio_sync.rules.changes import attribute_digests, value_digest
from cio_sync.rules.lag import LagHistogram
from cio_sync.rules.mapping import MappedUser
from cio_sync.rules.plan import DELETE, INSERT, SKIP, UPDATE, UserPlan
from cio_sync.store.sync_log import email_hash
from connectors.http import PermanentError
from tests.unit.pipeline.test_identity_push import RecordingV1

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


def plan(hull_id: str, action=UPDATE, reason="", previous=None, **attributes) -> UserPlan:
    attrs = {"id": f"u-{hull_id}", "email": f"{hull_id}@example.com", **attributes}
    mapped = MappedUser(hull_id, f"u-{hull_id}", f"{hull_id}@example.com", attrs, ["s"], indexed_at=1764151200)
    return UserPlan(hull_id, action, reason, mapped, None, f"u-{hull_id}", previous_digests=previous)


def test_unchanged_skips_are_not_logged_other_decisions_are():
    before = attribute_digests({"id": "u-a", "email": "a@example.com", "plan": "gold"})
    plans = [
        plan("a", previous=before, plan="silver"),
        plan("b", SKIP, "unchanged"),
        plan("c", SKIP, "not_in_segments"),
        plan("d", DELETE),
    ]
    outcome = UserOutcome(plans[0], ok=True, log=[{"call": "identify 1/1", "status": 200, "error": None}])
    rows = {r["hull_id"]: r for r in log_rows(plans, [outcome], "run-1", NOW, values=False)}
    assert set(rows) == {"a", "c", "d"}
    assert rows["a"]["changed"] == ["plan"] and rows["a"]["attribute_values"] is None
    assert rows["a"]["calls"] == outcome.log and rows["a"]["writeback"] == "pending"
    assert rows["a"]["email_hash"] == email_hash("A@example.com ")
    assert rows["c"]["reason"] == "not_in_segments" and rows["c"]["calls"] is None and rows["c"]["writeback"] is None
    assert rows["d"]["reason"] == PLANNED_DELETE and rows["d"]["changed"] is None


def test_values_are_logged_only_when_asked_and_a_failure_keeps_customerio_s_message():
    p = plan("a", INSERT, previous={}, plan="gold")
    rejected = PermanentError("Customer.io", "PUT", "/api/v1/customers/u-a", 400, "plan is invalid")
    [outcome] = push_page(RecordingV1(fail={"identify": rejected}), [p], max_attributes_per_call=30, concurrency=1)
    [row] = log_rows([p], [outcome], "run-1", NOW, values=True)
    assert row["attribute_values"] == {"email": "a@example.com", "id": "u-a", "plan": "gold"}
    assert row["calls"] == [{"call": "identify 1/1", "status": 400, "error": "plan is invalid"}]
    assert row["error"].startswith("permanent:") and row["writeback"] is None


def test_plan_sample_old_and_new_hashed_or_as_values():
    before = attribute_digests({"id": "u-a", "email": "a@example.com", "plan": "gold", "bio": "hi"})
    p = plan("a", previous=before, plan="silver")
    p.unset_attributes = ["bio"]
    [entry] = plan_sample([p, plan("b", SKIP, "unchanged")], 50, values=False)
    changes = {c["name"]: (c["old"], c["new"]) for c in entry["changes"]}
    assert changes == {
        "bio": (f"sha256:{value_digest('hi')}", "(removed)"),
        "plan": (f"sha256:{value_digest('gold')}", f"sha256:{value_digest('silver')}"),
    }
    [entry] = plan_sample([p], 50, values=True, old_values={"a": {"plan": "gold"}})
    assert {c["name"]: (c["old"], c["new"]) for c in entry["changes"]}["plan"] == ("'gold'", "'silver'")
    unknown = plan_sample([plan("c", plan="x")], 50, values=False)[0]["changes"]
    assert all(c["old"].startswith("(was: unknown") for c in unknown)
    markdown = plan_markdown(plan_sample([p, plan("d", DELETE)], 1, values=False), {"update": 1, "delete": 1}, False)
    assert "2 people would change; 1 of them below" in markdown and "| `plan` |" in markdown
    assert "silver" not in markdown


def test_lag_histogram_percentiles_are_within_a_bucket_and_merge_across_pages():
    rng = random.Random(7)
    lags = [rng.uniform(0, 600) for _ in range(2000)]
    pages = [LagHistogram() for _ in range(4)]
    for i, lag in enumerate(lags):
        pages[i % 4].add(lag)
    whole = SyncSummary()
    for page in pages:
        whole.merge(SyncSummary(freshness=page))
    hist = whole.freshness
    assert hist.count == 2000 and hist.max == max(lags)
    ordered = sorted(lags)
    for fraction in (0.5, 0.95):
        true = ordered[math.ceil(fraction * len(lags)) - 1]
        assert true <= hist.percentile(fraction) <= true * LagHistogram.GROWTH
    assert hist.percentile(1.0) == hist.max
    assert LagHistogram().percentile(0.5) is None
    skewed = LagHistogram()
    skewed.add(-3)  # a clock ahead of ours
    assert skewed.to_dict() == {"count": 1, "p50_seconds": 0.0, "p95_seconds": 0.0, "max_seconds": 0.0}


def test_the_plan_sample_stops_at_fifty_across_pages():
    summary = SyncSummary()
    for _ in range(3):
        summary.merge(SyncSummary(plan_sample=[{"hull_id": str(n)} for n in range(30)]))
    assert len(summary.plan_sample) == SyncSummary.MAX_PLAN_SAMPLE
