"""The unchanged fast path (pure): a user whose synced Hull fields and mapping settings are those
of the last accepted mapping is decided `unchanged` without being mapped; a change in any field
the mapping reads, in any setting that may shape it, or in the segments defeats it, and the
decisions are always those of the full mapping."""

from __future__ import annotations

import copy
import math
import random
from datetime import datetime, timezone
from typing import Any, ClassVar, get_args

import pandas as pd
import pytest

from cio_sync.rules import mapping
from cio_sync.rules.mapping import (
    NOT_MAPPING_SETTINGS,
    map_user,
    mapping_fingerprint,
    source_fields,
    source_keys,
)
from cio_sync.rules.plan import SKIP, UserPlan, plan_page
from cio_sync.settings import ConnectorSettings
from cio_sync.store.users import STATE_FRAME_COLUMNS

NOW = datetime(2026, 11, 29, tzinfo=timezone.utc)
NAMES = {"s1": "VIP", "s2": "Trial", "s3": "Other"}
WHITELISTED = {"s1", "s2"}
ATTRIBUTES = ["plan", "traits_coconuts", "closeio/title", "last_order_at", "account.name", "bio", "tags", "score"]

USER: dict[str, Any] = {
    "id": "5bd329d5e2bcf3eeaf000001",
    "email": "ann@example.com",
    "external_id": "u-1",
    "created_at": "2020-01-02T03:04:05Z",
    "indexed_at": "2026-11-29T10:00:00Z",
    "anonymous_ids": ["web:1", "web:2"],
    "segment_ids": ["s1", "s3"],
    "plan": "pro",  # a top-level attribute
    "traits_coconuts": 12,
    "traits_closeio/title": "Owner",
    "traits_last_order_at": "2026-01-01T00:00:00Z",
    "traits_tags": ["a", "b"],
    "traits_score": 1.5,
    "traits_bio": None,  # present but null
    "traits_customerio/synced_at": "2026-11-29T10:00:00Z",  # the connector's own write-back
    "traits_unsynced": "x",
    "account": {"id": "a1", "name": "Acme", "domain": "acme.example"},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ConnectorSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def settings(**kw: Any) -> ConnectorSettings:
    return ConnectorSettings(**{"synchronized_attributes": ATTRIBUTES, **kw})


def accepted_state(user: dict[str, Any], s: ConnectorSettings, names=NAMES, whitelisted=WHITELISTED) -> pd.DataFrame:
    """The state row the sync writes when Customer.io accepts the user's insert (the seal
    of users_page.outcome_row)."""
    plan = plan_page([user], empty_state(), s, names, whitelisted)[0]
    assert plan.action == "insert" and plan.mapped is not None
    row = dict(
        hull_id=user["id"],
        cio_id=plan.target_id,
        attributes_hash=plan.mapped.attributes_hash,
        created_at=NOW,
        deleted_at=None,
        segment_ids=plan.mapped.whitelisted_segment_ids,
        cio_id_mapping=s.user_id_mapping,
        attribute_names=sorted(plan.mapped.attributes),
        suppressed_at=None,
        rejected_hash=None,
        attribute_digests=plan.mapped.attribute_digests,
        source_digest=plan.source_seal,
    )
    return pd.DataFrame([row], columns=STATE_FRAME_COLUMNS)


def empty_state() -> pd.DataFrame:
    return pd.DataFrame([], columns=STATE_FRAME_COLUMNS)


def without_seal(state: pd.DataFrame) -> pd.DataFrame:
    state = state.copy()
    state["source_digest"] = None
    return state


def summary(plan: UserPlan) -> tuple[Any, ...]:
    return (plan.hull_id, plan.action, plan.reason, plan.target_id, plan.timestamp, plan.external_id)


def plan_one(user, state, s, names=NAMES, whitelisted=WHITELISTED) -> UserPlan:
    return plan_page([user], state, s, names, whitelisted)[0]


def test_an_unchanged_user_is_decided_without_mapping(monkeypatch):
    s = settings()
    state = accepted_state(USER, s)
    rewritten = {
        **copy.deepcopy(USER),
        "indexed_at": "2026-11-29T11:00:00Z",  # re-indexed by the write-back
        "traits_customerio/synced_at": "2026-11-29T11:00:00Z",
        "traits_unsynced": "y",  # not synced
        "account": {**USER["account"], "domain": "other.example"},  # an account field not synced
    }
    calls = []
    monkeypatch.setattr("cio_sync.rules.plan.map_user", lambda *a: calls.append(a) or map_user(*a))
    plan = plan_one(rewritten, state, s)
    assert (plan.action, plan.reason, plan.unchanged_source, plan.mapped) == (SKIP, "unchanged", True, None)
    assert calls == []
    assert summary(plan) == summary(plan_one(rewritten, without_seal(state), s))


def mutations(user: dict[str, Any], s: ConnectorSettings) -> list[tuple[str, dict[str, Any]]]:
    """Every field `map_user` may read, changed, nulled, removed, and added where absent."""
    top, account_keys = source_keys(s.user_id_mapping, tuple(s.synchronized_attributes))
    out = []
    for key in top:
        for label, value in (("changed", "zz-other"), ("null", None), ("one", 1), ("float", 1.0), ("true", True)):
            if user.get(key, object()) is value or (
                key in user and user[key] == value and type(user[key]) is type(value)
            ):
                continue
            out.append((f"{key} {label}", {**copy.deepcopy(user), key: value}))
        if key in user:
            out.append((f"{key} removed", {k: v for k, v in copy.deepcopy(user).items() if k != key}))
    for key in account_keys:
        account = dict(user.get("account") or {})
        out.append((f"account.{key} changed", {**copy.deepcopy(user), "account": {**account, key: "zz-other"}}))
        out.append((f"account.{key} null", {**copy.deepcopy(user), "account": {**account, key: None}}))
        rest = {k: v for k, v in account.items() if k != key}
        out.append((f"account.{key} removed", {**copy.deepcopy(user), "account": rest}))
    out.append(("account removed", {k: v for k, v in copy.deepcopy(user).items() if k != "account"}))
    out.append(("a segment added", {**copy.deepcopy(user), "segment_ids": [*user["segment_ids"], "s2"]}))
    out.append(("segments reordered", {**copy.deepcopy(user), "segment_ids": list(reversed(user["segment_ids"]))}))
    out.append(("list item changed", {**copy.deepcopy(user), "traits_tags": ["a", "c"]}))
    out.append(("nested type", {**copy.deepcopy(user), "traits_tags": ["a", "b", 1]}))
    return out


@pytest.mark.parametrize("user_id_mapping", ["external_id", "email", "account.id", "traits_coconuts"])
def test_a_change_in_any_field_the_mapping_reads_defeats_the_fast_path(user_id_mapping):
    s = settings(user_id_mapping=user_id_mapping)
    state = accepted_state(USER, s)
    keys = source_keys(s.user_id_mapping, tuple(s.synchronized_attributes))
    original = source_fields(USER, keys)
    changed = mutations(USER, s)
    assert len(changed) > 60
    for label, user in changed:
        assert source_fields(user, keys) != original, label
        plan = plan_one(user, state, s)
        assert not plan.unchanged_source, label
        # The decision is the full mapping's, with or without a seal in state.
        assert summary(plan) == summary(plan_one(user, without_seal(state), s)), label


def test_every_key_map_user_reads_is_covered():
    """map_user run on a recording dict: every key it looks at is in `source_keys`."""

    class Recording(dict):
        seen: ClassVar[set[str]] = set()

        def __contains__(self, key):
            Recording.seen.add(key)
            return super().__contains__(key)

        def __getitem__(self, key):
            Recording.seen.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            Recording.seen.add(key)
            return super().get(key, default)

    for user_id_mapping in ("external_id", "email", "traits_coconuts"):
        s = settings(user_id_mapping=user_id_mapping)
        Recording.seen = set()
        map_user(Recording(USER), s, NAMES, WHITELISTED)
        top, _ = source_keys(s.user_id_mapping, tuple(s.synchronized_attributes))
        assert Recording.seen - {"indexed_at", "account"} <= set(top)


def test_values_that_print_alike_are_told_apart():
    keys = source_keys("external_id", ("x",))
    base = {"id": "h", "external_id": "u"}
    values = [1, 1.0, True, "1", None, math.nan, math.inf, -math.inf, [None], [math.nan], {"a": None}, {"a": math.nan}]
    values += [[1], {"a": 1}, "", 0, False, [], {}, NOW, NOW.isoformat(), 2**70, float(2**70), "\ud800"]
    digests = {source_fields({**base, "traits_x": v}, keys) for v in values}
    assert len(digests) == len(values) and None not in digests
    assert source_fields(base, keys) not in digests  # absent is not null
    assert source_fields({**base, "account": "not an object"}, source_keys("account.id", ())) is None


def changed_setting(name: str, value: Any) -> Any:
    """Another valid value of a setting."""
    field = ConnectorSettings.model_fields[name]
    choices = [c for c in get_args(field.annotation) if c is not type(None)]
    literals = [a for c in choices for a in (get_args(c) or [c]) if isinstance(a, str)]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "extra"]
    if value is None:
        return 5 if int in choices else literals[0]
    if literals and value in literals:
        return next(v for v in literals if v != value)
    return f"{value}-other"


def test_a_change_in_any_setting_that_may_shape_the_mapping_defeats_the_fast_path():
    assert set(ConnectorSettings.model_fields) >= NOT_MAPPING_SETTINGS  # no stale names
    base = settings(on_segment_exit="keep", max_deletions_per_run=None)
    fp = mapping_fingerprint(base, NAMES, WHITELISTED)
    state = accepted_state(USER, base)
    checked = 0
    for name in ConnectorSettings.model_fields:
        value = getattr(base, name)
        other = base.model_copy(update={name: changed_setting(name, value)})
        if name == "enable_user_deletion":
            other = base.model_copy(update={name: True, "on_segment_exit": "delete"})
        same = mapping_fingerprint(other, NAMES, WHITELISTED) == fp
        assert same == (name in NOT_MAPPING_SETTINGS), name
        if not same:
            checked += 1
            assert not plan_one(USER, state, other).unchanged_source, name
    assert checked == len(ConnectorSettings.model_fields) - len(NOT_MAPPING_SETTINGS)
    # The segments resolved for the run: a renamed segment, one more whitelisted.
    assert not plan_one(USER, state, base, names={**NAMES, "s3": "Renamed"}).unchanged_source
    assert not plan_one(USER, state, base, whitelisted={"s1"}).unchanged_source
    assert plan_one(USER, state, base).unchanged_source


def test_a_new_mapping_version_defeats_the_fast_path(monkeypatch):
    s = settings()
    state = accepted_state(USER, s)
    monkeypatch.setattr(mapping, "MAPPING_VERSION", "test-next")
    assert not plan_one(USER, state, s).unchanged_source


def test_the_seal_binds_the_digest_to_the_attributes_hash():
    s = settings()
    state = accepted_state(USER, s)
    for column, value in (("attributes_hash", "another"), ("attributes_hash", None), ("source_digest", None)):
        changed = state.copy()
        changed[column] = value
        plan = plan_one(USER, changed, s)
        assert not plan.unchanged_source and plan.mapped is not None, column
        assert summary(plan) == summary(plan_one(USER, without_seal(changed), s)), column


@pytest.mark.parametrize(
    "state_change, expected",
    [
        ({"deleted_at": NOW}, ("insert", "")),  # deleted since: re-created, so mapped after all
        ({"suppressed_at": NOW, "deleted_at": NOW}, ("insert", "")),
        ({"created_at": None}, ("insert", "")),
    ],
)
def test_a_sealed_user_the_table_does_not_call_unchanged_is_mapped(state_change, expected):
    s = settings()
    state = accepted_state(USER, s)
    for column, value in state_change.items():
        state[column] = [value]
    plan = plan_one(USER, state, s)
    assert (plan.action, plan.reason) == expected and plan.mapped is not None and not plan.unchanged_source
    reference = plan_one(USER, without_seal(state), s)
    assert summary(plan) == summary(reference)
    assert plan.mapped.attributes == reference.mapped.attributes
    assert plan.unsuppress_id == reference.unsuppress_id


def test_random_documents_decide_as_the_full_mapping_does():
    """Random users and random edits (synced or not): the plans with the seal in state are the
    plans without it, and a user decided from its digest maps to the hash state holds."""
    rng = random.Random(16)
    s = settings(on_segment_exit="delete")
    pool_values = [None, 0, 1, 1.0, True, False, "", "a", "b", "2026-01-01", [], ["a"], {"k": 1}]
    keys = [*(k for k in USER if k != "id"), "traits_plan", "plan", "traits_new", "name"]
    users, states = [], []
    for n in range(300):
        user = copy.deepcopy(USER)
        user["id"] = f"{n:024x}"
        user["external_id"] = f"u-{n}"
        user["segment_ids"] = rng.choice([["s1"], ["s2", "s3"], ["s1", "s2"]])
        states.append(accepted_state(user, s))
        for _ in range(rng.choice([0, 0, 1, 2])):
            key = rng.choice(keys)
            if key in ("segment_ids",):
                user[key] = rng.choice([["s1"], ["s3"], [], ["s2", "s1"]])
            elif key == "account":
                user[key] = rng.choice([None, {}, {"name": rng.choice(pool_values)}, {"id": "a1", "name": "Acme"}])
            elif rng.random() < 0.2:
                user.pop(key, None)
            elif key not in ("email",) or rng.random() < 0.5:
                user[key] = rng.choice(pool_values)
        users.append(user)
    state = pd.concat(states, ignore_index=True)
    fast = plan_page(users, state, s, NAMES, WHITELISTED)
    full = plan_page(users, without_seal(state), s, NAMES, WHITELISTED)
    assert [summary(p) for p in fast] == [summary(p) for p in full]
    hashes = dict(zip(state["hull_id"], state["attributes_hash"]))
    skipped = 0
    for plan, user in zip(fast, users):
        if plan.unchanged_source:
            skipped += 1
            assert map_user(user, s, NAMES, WHITELISTED).attributes_hash == hashes[plan.hull_id]
    assert skipped > 100  # most are untouched or touched only outside the synced fields


def test_a_user_mapped_and_found_unchanged_without_its_digest_is_resealed():
    s = settings()
    state = accepted_state(USER, s)
    assert not plan_one(USER, state, s).reseal  # the fast path: nothing to write
    plan = plan_one(USER, without_seal(state), s)
    assert (plan.action, plan.reason, plan.reseal) == (SKIP, "unchanged", True)
    assert plan.source_seal == state["source_digest"][0]  # what the fast path then matches
    changed = plan_one({**USER, "traits_coconuts": 13}, without_seal(state), s)
    assert changed.action == "update" and not changed.reseal  # the update's row carries it
