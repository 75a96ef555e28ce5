"""Mapping rules of a Hull user to Customer.io attributes (pure)."""

import pytest

from cio_sync.rules.mapping import (
    MalformedUserError,
    attribute_name,
    byte_length,
    chunk_attributes,
    fit_list,
    map_user,
    resolve_segments,
    to_unix_seconds,
)
from cio_sync.settings import ConnectorSettings

USER = {
    "id": "5bd329d5e2bcf3eeaf000099",
    "email": "darth@example.com",
    "external_id": "u-123",
    "created_at": "2018-10-26T14:51:01Z",
    "segment_ids": ["s1", "s2"],
    "traits_coconuts": 12,
    "traits_closeio/title": "Banana Stand Owner",
    "traits_last_order_at": "2020-01-01T00:00:00Z",
    "traits_renewal_date": "2021-02-03",
    "traits_nickname_at": "not a date",
    "traits_customerio/synced_at": "2026-11-26T10:00:00Z",
    "account": {"id": "a1", "closeio/name": "Acme"},
}
NAMES = {"s1": "VIP", "s2": "Trial"}


def settings(**kw):
    return ConnectorSettings(**kw)


@pytest.mark.parametrize(
    "hull, cio",
    [
        ("traits_coconuts", "coconuts"),
        ("traits_salesforce_lead/title", "salesforce_lead-title"),
        ("account.clearbit/name", "account_clearbit-name"),
        ("id", "hull_id"),
        ("first_name", "first_name"),
    ],
)
def test_attribute_names(hull, cio):
    assert attribute_name(hull) == cio


def test_dates_become_integer_unix_seconds():
    assert to_unix_seconds("2018-10-26T14:51:01Z") == 1540565461
    assert to_unix_seconds("2021-02-03") == 1612310400
    assert to_unix_seconds("soon") == "soon"
    assert to_unix_seconds(42) == 42


def test_map_user_defaults_and_whitelisted_attributes():
    s = settings(
        synchronized_attributes=[
            "traits_coconuts",
            "closeio/title",
            "account.closeio/name",
            "id",
            "traits_last_order_at",
            "renewal_date",
            "nickname_at",
            "customerio/synced_at",
            "traits_missing",
        ],
        synchronized_segments=["s1"],
    )
    mapped = map_user(USER, s, NAMES, {"s1"})
    assert mapped.cio_id == "u-123"
    assert mapped.attributes == {
        "id": "u-123",
        "email": "darth@example.com",
        "created_at": 1540565461,
        "hull_segments": ["Trial", "VIP"],
        "coconuts": 12,
        "closeio-title": "Banana Stand Owner",
        "account_closeio-name": "Acme",
        "hull_id": "5bd329d5e2bcf3eeaf000099",
        "last_order_at": 1577836800,
        "renewal_date": 1612310400,
        "nickname_at": "not a date",
    }  # customerio/* (our own write-back) is never sent back out
    assert mapped.whitelisted_segment_ids == ["s1"]
    assert mapped.dropped == []


def test_user_id_mapping_and_invalid_id():
    assert map_user(USER, settings(user_id_mapping="id"), NAMES, set()).cio_id == USER["id"]
    assert map_user(USER, settings(user_id_mapping="email"), NAMES, set()).cio_id == "darth@example.com"
    long_id = dict(USER, external_id="x" * 151)
    assert map_user(long_id, settings(), NAMES, set()).id_error
    assert map_user(dict(USER, external_id=None), settings(), NAMES, set()).cio_id is None


def test_oversize_attributes_are_dropped_by_name_and_the_rest_kept():
    user = dict(USER, traits_bio="é" * 501, **{"traits_" + "n" * 151: 1})
    mapped = map_user(user, settings(synchronized_attributes=["bio", "n" * 151, "coconuts"]), NAMES, set())
    assert "bio" not in mapped.attributes and mapped.attributes["coconuts"] == 12
    assert [name for name, _ in mapped.dropped] == ["bio", "n" * 151]


def test_malformed_users_raise():
    with pytest.raises(MalformedUserError):
        map_user({"email": "x@y"}, settings(), {}, set())
    with pytest.raises(MalformedUserError):
        map_user({"id": "a", "segment_ids": "s1"}, settings(), {}, set())
    # Sorting or hashing such segment ids raised TypeError: the whole page failed, every run.
    for odd in ([1, "s1"], [None, "s1"], [{"id": "s1"}], [["s1"]]):
        with pytest.raises(MalformedUserError, match="segment_ids"):
            map_user({"id": "a", "segment_ids": odd}, settings(), {}, set())


@pytest.mark.parametrize("odd", [{"a": 1}, ["u-1"], True, float("nan"), float("inf")])
def test_an_id_that_is_not_a_string_or_a_number_is_an_id_error(odd):
    mapped = map_user(dict(USER, external_id=odd), settings(), NAMES, set())
    assert mapped.id_error is not None and "not a string or a number" in mapped.id_error
    assert map_user(dict(USER, external_id=12), settings(), NAMES, set()).id_error is None


def test_chunking_315_attributes_takes_11_calls_with_email_first():
    attributes = {f"a{i:03}": i for i in range(313)} | {"id": "u", "email": "e@x"}
    chunks = chunk_attributes(attributes, 30)
    assert len(chunks) == 11 and all(len(c) <= 30 for c in chunks)
    assert list(chunks[0])[:2] == ["email", "id"]
    assert sum(len(c) for c in chunks) == 315


def test_segments_resolve_by_id_or_name():
    segments = [{"id": "s1", "name": "VIP"}, {"id": "s2", "name": "Trial"}]
    assert resolve_segments(["VIP", "s2", "nope"], segments) == ({"s1", "s2"}, ["nope"])


def test_names_starting_with_an_underscore_are_dropped_and_counted():
    user = dict(USER, traits__private=1, _internal="x")
    mapped = map_user(user, settings(synchronized_attributes=["_private", "_internal", "coconuts"]), NAMES, set())
    assert not [name for name in mapped.attributes if name.startswith("_")]
    assert mapped.attributes["coconuts"] == 12
    assert [name for name, _ in mapped.dropped] == ["_private", "_internal"]
    assert all("reserved" in reason for _, reason in mapped.dropped)


def test_hull_segments_keep_to_the_value_limit_dropping_from_the_end():
    names = {f"s{i:02d}": f"Customers of region number {i:02d}" for i in range(60)}
    user = dict(USER, segment_ids=list(names))
    mapped = map_user(user, settings(), names, {"s00"})
    kept = mapped.attributes["hull_segments"]
    assert byte_length(kept) <= 1000 < byte_length(sorted(names.values()))
    assert kept == sorted(names.values())[: len(kept)]  # the end is what goes
    assert mapped.segments_left_out == 60 - len(kept) > 0
    assert mapped.dropped == []  # shortened, not dropped
    small = map_user(USER, settings(), NAMES, set())
    assert small.attributes["hull_segments"] == ["Trial", "VIP"] and small.segments_left_out == 0


def test_fit_list_drops_from_the_end_until_it_fits():
    assert fit_list(["aa", "bb", "cc"], 100) == (["aa", "bb", "cc"], 0)
    assert fit_list(["aa", "bb", "cc"], len('["aa","bb"]')) == (["aa", "bb"], 1)
    assert fit_list(["x" * 50], 10) == ([], 1)


def test_an_object_as_id_is_decided_invalid_id():
    import pandas as pd

    from cio_sync.rules.plan import plan_page
    from cio_sync.store.users import STATE_FRAME_COLUMNS

    empty_state = pd.DataFrame([], columns=STATE_FRAME_COLUMNS)
    plans = plan_page([dict(USER, external_id={"a": 1})], empty_state, settings(), NAMES, {"s1"})
    assert [(p.action, p.reason) for p in plans] == [("skip", "invalid_id")]
