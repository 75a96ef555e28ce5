"""Identity rules (pure): segment exits, update-only, id changes, removed attributes,
unsuppress, anonymous_id and `_timestamp`, and the settings that drive them."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from cio_sync.rules.decisions import PAGE_COLUMNS, STATE_COLUMNS, decide
from cio_sync.rules.mapping import latest_anonymous_id, map_user, removed_names, tracked_names
from cio_sync.rules.plan import identify_attributes, plan_page
from cio_sync.settings import ConnectorSettings
from cio_sync.store.users import STATE_FRAME_COLUMNS

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in (
        "ENABLE_USER_DELETION",
        "ON_SEGMENT_EXIT",
        "USER_ID_MAPPING",
        "SYNC_MODE",
        "ON_ID_CHANGE",
        "UNSET_REMOVED_ATTRIBUTES",
    ):
        monkeypatch.delenv(key, raising=False)


def settings(**kw) -> ConnectorSettings:
    return ConnectorSettings(synchronized_attributes=["plan", "coconuts", "bio"], **kw)


# ----- decisions ---------------------------------------------------------------------------


def page_row(hull_id, in_segments=True, h="h1"):
    return (hull_id, True, in_segments, True, True, h)


def decided(page_row_, state_row, exit_, update_only=False, suppressed=False, unset=False):
    page = pd.DataFrame([page_row_], columns=PAGE_COLUMNS)
    state = pd.DataFrame(
        [(*state_row, suppressed, unset)] if state_row else [],
        columns=[*STATE_COLUMNS, "state_suppressed", "state_unset"],
    )
    frame = decide(page, state, exit_, update_only)
    return frame.loc[0, "action"], frame.loc[0, "reason"]


LIVE = ("x", True, False, "h1")
DELETED = ("x", True, True, "h1")


@pytest.mark.parametrize(
    "row, state, exit_, flags, expected",
    [
        (page_row("x", False), LIVE, "keep", {}, ("skip", "not_in_segments")),
        (page_row("x", False), LIVE, "delete", {}, ("delete", "")),
        (page_row("x", False), LIVE, "suppress", {}, ("suppress", "")),
        (page_row("x", False), None, "suppress", {}, ("skip", "not_in_segments")),
        (page_row("x", False), DELETED, "suppress", {"suppressed": True}, ("skip", "already_suppressed")),
        (page_row("x", False), DELETED, "delete", {}, ("skip", "already_deleted")),
        (page_row("x", False), LIVE, "unset_segments", {}, ("unset_segments", "")),
        (page_row("x", False), LIVE, "unset_segments", {"unset": True}, ("skip", "not_in_segments")),
        (page_row("x"), None, "keep", {"update_only": True}, ("skip", "not_in_customerio")),
        (page_row("x"), DELETED, "suppress", {"update_only": True, "suppressed": True}, ("skip", "not_in_customerio")),
        (page_row("x", h="h2"), LIVE, "keep", {"update_only": True}, ("update", "")),
        (page_row("x"), DELETED, "suppress", {"suppressed": True}, ("insert", "")),  # back: re-created
        (page_row("x", h="h2"), LIVE, "unset_segments", {"unset": True}, ("update", "")),  # back
    ],
)
def test_segment_exits_and_update_only(row, state, exit_, flags, expected):
    assert decided(row, state, exit_, **flags) == expected


def test_enable_user_deletion_bool_still_decides():
    assert decided(page_row("x", False), LIVE, True) == ("delete", "")
    assert decided(page_row("x", False), LIVE, False) == ("skip", "not_in_segments")
    with pytest.raises(ValueError):
        decided(page_row("x", False), LIVE, "vanish")


# ----- settings ----------------------------------------------------------------------------


def test_on_segment_exit_and_its_enable_user_deletion_alias(monkeypatch):
    assert ConnectorSettings().on_segment_exit == "keep"
    assert ConnectorSettings(enable_user_deletion=True).on_segment_exit == "delete"
    suppress = ConnectorSettings(on_segment_exit="suppress", enable_user_deletion=True)
    assert suppress.on_segment_exit == "suppress" and suppress.enable_user_deletion is False
    assert ConnectorSettings(on_segment_exit="delete").enable_user_deletion is True
    monkeypatch.setenv("ON_SEGMENT_EXIT", "unset_segments")
    assert ConnectorSettings.resolve().on_segment_exit == "unset_segments"
    # The alias given as a parameter wins over the environment's ON_SEGMENT_EXIT.
    assert ConnectorSettings.resolve(enable_user_deletion=True).on_segment_exit == "delete"
    monkeypatch.delenv("ON_SEGMENT_EXIT")
    defaults = ConnectorSettings()
    assert (defaults.on_id_change, defaults.unset_removed_attributes, defaults.sync_mode) == ("merge", True, "upsert")
    # A failed batch saves model_dump(); its rerun must resolve to the same settings.
    saved = ConnectorSettings.resolve(**ConnectorSettings(enable_user_deletion=True).model_dump(mode="json"))
    assert saved.on_segment_exit == "delete" and saved.enable_user_deletion is True


# ----- mapping -----------------------------------------------------------------------------

USER = {
    "id": "h1",
    "email": "a@example.com",
    "external_id": "u-1",
    "segment_ids": ["s1"],
    "anonymous_ids": ["web:1", "web:2"],
    "indexed_at": "2026-11-26T10:00:05Z",
    "traits_plan": "gold",
    "traits_coconuts": None,
}


def test_identify_carries_the_latest_anonymous_id_and_indexed_at():
    mapped = map_user(USER, settings(), {"s1": "VIP"}, {"s1"})
    assert mapped.attributes["anonymous_id"] == "web:2"
    assert mapped.indexed_at == int(datetime(2026, 11, 26, 10, 0, 5, tzinfo=timezone.utc).timestamp())
    assert latest_anonymous_id({"anonymous_ids": []}) is None
    assert latest_anonymous_id({"anonymous_ids": ["a", ""]}) == "a"
    assert "anonymous_id" not in map_user({**USER, "anonymous_ids": None}, settings(), {}, {"s1"}).attributes


def test_a_null_trait_is_left_out_when_removal_is_on_and_sent_as_null_when_off():
    assert "coconuts" not in map_user(USER, settings(), {}, {"s1"}).attributes
    assert map_user(USER, settings(unset_removed_attributes=False), {}, {"s1"}).attributes["coconuts"] is None


def test_names_kept_leave_out_the_always_sent_ones():
    attributes = {
        "id": "u-1",
        "email": "e",
        "created_at": 1,
        "hull_segments": [],
        "anonymous_id": "w",
        "plan": "gold",
        "bio": "x",
    }
    assert tracked_names(attributes) == ["bio", "plan"]
    assert removed_names(["bio", "plan", "color", "email"], {"plan": 1}) == ["bio", "color"]
    assert removed_names(None, {"plan": 1}) == []


# ----- plans -------------------------------------------------------------------------------


def state(**row) -> pd.DataFrame:
    base = dict(
        hull_id="h1",
        cio_id="u-1",
        attributes_hash="old",
        created_at=NOW,
        deleted_at=None,
        segment_ids=["s1"],
        cio_id_mapping="external_id",
        attribute_names=["bio", "coconuts", "plan"],
        suppressed_at=None,
    )
    base.update(row)
    return pd.DataFrame([base], columns=STATE_FRAME_COLUMNS)


def plan_one(user: dict, state_frame: pd.DataFrame, **kw):
    return plan_page([user], state_frame, settings(**kw), {"s1": "VIP"}, {"s1"})[0]


def test_an_id_change_plans_a_merge_by_default():
    plan = plan_one({**USER, "external_id": "acct-1"}, state())
    assert (plan.action, plan.target_id, plan.previous_id, plan.id_change) == ("update", "acct-1", "u-1", "merge")
    assert plan.previous_mapping == "external_id" and plan.destructive
    assert plan_one({**USER, "external_id": "acct-1"}, state(), on_id_change="delete_old").id_change == "delete_old"
    ignored = plan_one({**USER, "external_id": "acct-1"}, state(), on_id_change="ignore")
    assert ignored.previous_id == "u-1" and ignored.id_change is None and not ignored.destructive
    assert plan_one(USER, state()).previous_id is None  # same id: no change


def test_an_id_change_after_a_mapping_change_names_the_old_person_by_its_old_kind():
    plan = plan_one(USER, state(), user_id_mapping="email")
    assert (plan.target_id, plan.target_mapping) == ("a@example.com", "email")
    assert (plan.previous_id, plan.previous_mapping) == ("u-1", "external_id")
    # Rows from before per-row mappings: the run's own mapping (a migration backfills them first).
    assert plan_one(USER, state(cio_id="x", cio_id_mapping=None)).previous_mapping == "external_id"


def test_removed_attributes_are_planned_as_empty_strings():
    plan = plan_one(USER, state())  # coconuts is null now, bio is not in the user
    assert plan.unset_attributes == ["bio", "coconuts"]
    chunks = identify_attributes(plan, 30)
    assert chunks[0]["bio"] == "" and chunks[0]["coconuts"] == "" and chunks[0]["plan"] == "gold"
    assert plan_one(USER, state(), unset_removed_attributes=False).unset_attributes == []
    assert plan_one(USER, state(attribute_names=None)).unset_attributes == []  # rows from before: unknown


def test_a_suppressed_person_coming_back_is_unsuppressed_then_inserted():
    plan = plan_one(USER, state(deleted_at=NOW, suppressed_at=NOW, segment_ids=[]))
    assert plan.action == "insert" and plan.unsuppress_id == "u-1" and plan.unset_attributes == []


def test_segment_exit_targets_the_stored_id_and_unset_sends_empty_segments():
    out = {**USER, "segment_ids": [], "external_id": "acct-1"}
    suppress = plan_one(out, state(), on_segment_exit="suppress")
    assert (suppress.action, suppress.target_id, suppress.destructive) == ("suppress", "u-1", True)
    unset = plan_one(out, state(), on_segment_exit="unset_segments")
    assert unset.action == "unset_segments" and identify_attributes(unset, 30) == [{"hull_segments": []}]
    assert plan_one(out, state(segment_ids=[]), on_segment_exit="unset_segments").reason == "not_in_segments"


def test_update_only_marks_plans_and_skips_people_not_in_customerio():
    plan = plan_one({**USER, "traits_plan": "silver"}, state(), sync_mode="update_only")
    assert (
        plan.action == "update"
        and plan.update_only
        and plan.timestamp == map_user(USER, settings(), {}, set()).indexed_at
    )
    moved = plan_one({**USER, "external_id": "acct-1"}, state(), sync_mode="update_only", on_id_change="delete_old")
    assert moved.id_change == "delete_old" and not moved.update_only  # the new id must be created
    new = plan_one(USER, state().iloc[0:0], sync_mode="update_only")
    assert (new.action, new.reason) == ("skip", "not_in_customerio")
