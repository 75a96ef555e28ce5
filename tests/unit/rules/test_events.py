"""How one Hull event becomes one Customer.io event: pure rules, no Prefect, no HTTP, no SQL."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from ulid import ULID

from cio_sync.rules.events import (
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    SEND,
    SEND_ANONYMOUS,
    SKIP,
    EventUser,
    event_body,
    event_ulid,
    parse_created_at,
    plan_event,
)
from cio_sync.settings import ConnectorSettings

CREATED = "2026-11-26T10:02:03Z"
CREATED_UNIX = 1795687323  # 2026-11-26T10:02:03Z

KNOWN = EventUser(cio_id="u-1", in_segments=True, has_mapped_id=True, anonymous_id="web:1")
ANONYMOUS = EventUser(cio_id=None, in_segments=True, has_mapped_id=False, anonymous_id="web:user")


def settings(events_filter=("Signed Up", "page"), anonymous_events=False) -> ConnectorSettings:
    # Built directly (not `resolve`) so no environment variable can leak into a pure test.
    return ConnectorSettings.model_construct(events_filter=list(events_filter), anonymous_events=anonymous_events)


def hull_event(name="Signed Up", event_id="e-1", created_at=CREATED, **fields) -> dict:
    return {
        "event_id": event_id,
        "event": name,
        "created_at": created_at,
        "properties": {},
        "context": {},
        "user_id": "hull-1",
        **fields,
    }


# -- the deterministic ULID ----------------------------------------------------------------


def test_same_hull_event_gives_the_same_ulid():
    created = parse_created_at(CREATED)
    assert event_ulid("e-1", created) == event_ulid("e-1", parse_created_at(CREATED))


def test_different_hull_events_at_the_same_time_get_different_ulids():
    created = parse_created_at(CREATED)
    assert event_ulid("e-1", created) != event_ulid("e-2", created)


def test_ulid_is_valid_and_its_time_part_is_the_event_creation_time():
    created = parse_created_at("2026-11-26T10:02:03.456Z")
    value = event_ulid("5bd329d5e2bcf3eeaf000099", created)
    assert len(value) == 26
    parsed = ULID.from_str(value)  # raises on anything that is not a ULID
    assert str(parsed) == value
    assert parsed.milliseconds == int(created.timestamp() * 1000)
    assert parsed.datetime == created


def test_created_at_accepts_iso_with_offset_naive_and_unix_seconds():
    expected = datetime(2026, 11, 26, 10, 2, 3, tzinfo=timezone.utc)
    assert parse_created_at("2026-11-26T10:02:03Z") == expected
    assert parse_created_at("2026-11-26T11:02:03+01:00") == expected
    assert parse_created_at("2026-11-26T10:02:03") == expected  # naive means UTC
    assert parse_created_at(CREATED_UNIX) == expected


# -- generic events ------------------------------------------------------------------------


def test_generic_event_body_carries_name_properties_unix_timestamp_and_ulid():
    event = hull_event(properties={"plan": "gold", "seats": 3, "tags": ["a"]})
    plan = plan_event(event, KNOWN, settings())
    assert plan.action == SEND and plan.target_id == "u-1"
    assert plan.cio_event_id == event_ulid("e-1", parse_created_at(CREATED))
    assert plan.body == {
        "id": plan.cio_event_id,
        "timestamp": CREATED_UNIX,
        "name": "Signed Up",
        "data": {"plan": "gold", "seats": 3, "tags": ["a"]},
    }
    assert "type" not in plan.body  # Customer.io's default type is "event"


def test_generic_event_without_properties_sends_empty_data():
    plan = plan_event(hull_event(properties=None), KNOWN, settings())
    assert plan.action == SEND and plan.body["data"] == {}


# -- page views ----------------------------------------------------------------------------


def test_page_view_takes_url_and_referrer_from_properties_first():
    event = hull_event(
        "page",
        properties={"url": "https://example.com/pricing", "referrer": "https://google.com"},
        context={"page_url": "https://example.com/other", "referrer_url": "https://bing.com"},
    )
    plan = plan_event(event, KNOWN, settings())
    assert plan.action == SEND
    assert plan.body["type"] == "page"
    assert plan.body["name"] == "https://example.com/pricing"
    assert plan.body["data"] == {"referrer": "https://google.com"}


def test_page_view_falls_back_to_context_url_and_referrer():
    event = hull_event(
        "page", context={"page_url": "https://example.com/docs", "referrer_url": "https://bing.com", "ip": "1.2.3.4"}
    )
    plan = plan_event(event, KNOWN, settings())
    assert (plan.body["type"], plan.body["name"]) == ("page", "https://example.com/docs")
    assert plan.body["data"] == {"referrer": "https://bing.com"}


def test_page_view_without_referrer_sends_no_referrer_key():
    plan = plan_event(hull_event("page", properties={"url": "https://example.com/"}), KNOWN, settings())
    assert plan.body["data"] == {}


def test_page_view_without_any_url_is_skipped():
    plan = plan_event(hull_event("page", properties={"title": "Home"}), KNOWN, settings())
    assert (plan.action, plan.reason) == (SKIP, "page_without_url")


def test_page_view_needs_page_in_events_filter():
    event = hull_event("page", properties={"url": "https://example.com/"})
    plan = plan_event(event, KNOWN, settings(events_filter=["Signed Up"]))
    assert (plan.action, plan.reason) == (SKIP, "not_in_events_filter")


# -- Customer.io's limits ------------------------------------------------------------------


def test_event_name_of_exactly_100_bytes_is_sent_and_101_is_skipped():
    assert plan_event(hull_event("n" * MAX_EVENT_NAME_BYTES), KNOWN, settings(["n" * 100])).action == SEND
    long_name = "n" * (MAX_EVENT_NAME_BYTES + 1)
    plan = plan_event(hull_event(long_name), KNOWN, settings([long_name]))
    assert (plan.action, plan.reason) == (SKIP, "name_too_long")


def test_event_name_limit_counts_utf8_bytes_not_characters():
    fits = "é" * 50  # 50 characters, 100 bytes
    too_long = "é" * 51  # 51 characters (under 100), 102 bytes
    assert plan_event(hull_event(fits), KNOWN, settings([fits])).action == SEND
    plan = plan_event(hull_event(too_long), KNOWN, settings([too_long]))
    assert (plan.action, plan.reason) == (SKIP, "name_too_long")


def test_page_url_over_100_bytes_is_skipped_because_it_becomes_the_name():
    url = "https://example.com/" + "p" * 100
    plan = plan_event(hull_event("page", properties={"url": url}), KNOWN, settings())
    assert (plan.action, plan.reason) == (SKIP, "name_too_long")


def test_event_data_limit_is_100000_bytes_of_compact_json():
    # {"b":"<x * n>"} is n + 8 bytes of compact JSON, the size Customer.io measures.
    at_limit = {"b": "x" * (MAX_EVENT_DATA_BYTES - 8)}
    over = {"b": "x" * (MAX_EVENT_DATA_BYTES - 7)}
    assert plan_event(hull_event(properties=at_limit), KNOWN, settings()).action == SEND
    plan = plan_event(hull_event(properties=over), KNOWN, settings())
    assert (plan.action, plan.reason) == (SKIP, "data_too_large")


def test_event_data_limit_counts_multibyte_characters_as_bytes():
    data = {"b": "€" * 34_000}  # 34,000 characters, 102,000 bytes
    body, reason = event_body(hull_event(properties=data), parse_created_at(CREATED), "ID")
    assert (body, reason) == (None, "data_too_large")


# -- who the event belongs to --------------------------------------------------------------


def test_event_not_in_events_filter_is_skipped_and_keeps_its_ulid():
    plan = plan_event(hull_event("Order Completed"), KNOWN, settings())
    assert (plan.action, plan.reason) == (SKIP, "not_in_events_filter")
    assert plan.hull_event_id == "e-1" and len(plan.cio_event_id) == 26


def test_empty_events_filter_sends_nothing():
    plan = plan_event(hull_event(), KNOWN, settings(events_filter=[]))
    assert (plan.action, plan.reason) == (SKIP, "not_in_events_filter")


def test_user_outside_synchronized_segments_is_skipped():
    outside = EventUser(cio_id="u-1", in_segments=False, has_mapped_id=True)
    plan = plan_event(hull_event(), outside, settings())
    assert (plan.action, plan.reason) == (SKIP, "user_not_in_segments")


def test_user_that_hull_no_longer_returns_is_skipped():
    plan = plan_event(hull_event(), None, settings())
    assert (plan.action, plan.reason) == (SKIP, "user_not_found")


def test_user_not_yet_created_in_customerio_is_skipped():
    # Events never create people in Customer.io: sending would be lost.
    not_created = EventUser(cio_id=None, in_segments=True, has_mapped_id=True)
    plan = plan_event(hull_event(), not_created, settings())
    assert (plan.action, plan.reason) == (SKIP, "user_not_in_customerio")


# -- anonymous events ----------------------------------------------------------------------


def test_anonymous_event_is_skipped_when_the_setting_is_off():
    plan = plan_event(hull_event(anonymous_id="web:16"), ANONYMOUS, settings(anonymous_events=False))
    assert (plan.action, plan.reason) == (SKIP, "anonymous_events_disabled")


def test_anonymous_event_uses_the_event_anonymous_id_when_the_setting_is_on():
    plan = plan_event(
        hull_event(anonymous_id="web:16", properties={"k": 1}), ANONYMOUS, settings(anonymous_events=True)
    )
    assert plan.action == SEND_ANONYMOUS and plan.target_id is None
    assert plan.body == {
        "id": plan.cio_event_id,
        "timestamp": CREATED_UNIX,
        "name": "Signed Up",
        "data": {"k": 1},
        "anonymous_id": "web:16",
    }


def test_anonymous_event_falls_back_to_the_user_anonymous_id():
    plan = plan_event(hull_event(anonymous_id=None), ANONYMOUS, settings(anonymous_events=True))
    assert plan.action == SEND_ANONYMOUS and plan.body["anonymous_id"] == "web:user"


def test_anonymous_event_without_any_anonymous_id_is_skipped():
    nobody = EventUser(cio_id=None, in_segments=True, has_mapped_id=False, anonymous_id=None)
    plan = plan_event(hull_event(anonymous_id=None), nobody, settings(anonymous_events=True))
    assert (plan.action, plan.reason) == (SKIP, "no_anonymous_id")


def test_anonymous_page_view_keeps_type_page():
    event = hull_event("page", anonymous_id="web:16", properties={"url": "https://example.com/"})
    plan = plan_event(event, ANONYMOUS, settings(anonymous_events=True))
    assert plan.action == SEND_ANONYMOUS
    assert (plan.body["type"], plan.body["name"], plan.body["anonymous_id"]) == (
        "page",
        "https://example.com/",
        "web:16",
    )


# -- malformed events ----------------------------------------------------------------------


def test_event_without_id_is_skipped():
    plan = plan_event(hull_event(event_id=None), KNOWN, settings())
    assert (plan.action, plan.reason, plan.hull_event_id) == (SKIP, "no_event_id", "")


@pytest.mark.parametrize("created_at", [None, "yesterday"])
def test_event_without_a_readable_created_at_is_skipped(created_at):
    plan = plan_event(hull_event(created_at=created_at), KNOWN, settings())
    assert (plan.action, plan.reason) == (SKIP, "invalid_created_at")


# -- the run summary -----------------------------------------------------------------------


def test_summary_artifact_shows_events_sent_failed_and_skipped_by_reason():
    from cio_sync.pipeline.summary import SyncSummary

    page_one, page_two = SyncSummary(), SyncSummary()
    page_one.events.update(sent=3, failed=1)
    page_one.event_skip_reasons.update(name_too_long=1)
    page_two.events.update(sent=2)
    page_two.event_skip_reasons.update(name_too_long=1, anonymous_events_disabled=4)
    rows = {row["metric"]: row["value"] for row in page_one.merge(page_two).table()}
    assert rows["events: sent"] == 5 and rows["events: failed"] == 1
    assert rows["events skipped: name_too_long"] == 2
    assert rows["events skipped: anonymous_events_disabled"] == 4


def _event_user_from_map_user(doc, settings, whitelisted, live):
    """What the events phase computed before `event_user`: the whole `map_user`."""
    from cio_sync.rules.mapping import latest_anonymous_id, map_user

    mapped = map_user(doc, settings, {}, whitelisted)
    return mapped.hull_id, EventUser(
        cio_id=live.get(mapped.hull_id) if mapped.cio_id == live.get(mapped.hull_id) else None,
        in_segments=bool(mapped.whitelisted_segment_ids),
        has_mapped_id=mapped.cio_id is not None,
        anonymous_id=latest_anonymous_id(doc),
    )


@pytest.mark.parametrize("user_id_mapping", ["external_id", "id", "email", "account.domain", "custom"])
def test_event_user_agrees_with_map_user(user_id_mapping):
    from cio_sync.rules.events import event_user
    from cio_sync.rules.mapping import MalformedUserError

    settings = ConnectorSettings(user_id_mapping=user_id_mapping)
    whitelisted = {"seg-a", "seg-b"}
    docs = [
        {"id": "h1", "external_id": "u-1", "email": "a@x.io", "segment_ids": ["seg-a"], "anonymous_ids": ["a1", "a2"]},
        {"id": "h2", "external_id": "u-2", "segment_ids": ["seg-z"]},
        {"id": "h3", "external_id": "", "email": None, "segment_ids": []},
        {"id": "h4", "external_id": 0, "traits_custom": 12, "segment_ids": None, "account": {"domain": "x.io"}},
        {"id": "h5", "external_id": None, "custom": False, "segment_ids": ["seg-b", "seg-z"]},
        {"id": "h6", "external_id": "u-6", "traits_custom": "", "account": {}, "segment_ids": ["seg-a"]},
        {"id": "h7", "external_id": "u-7-renamed", "email": "b@x.io", "segment_ids": ["seg-a"], "anonymous_ids": [""]},
        {"id": "", "external_id": "u-8"},
        {"external_id": "u-9"},
        {"id": 10, "external_id": "u-10"},
        {"id": "h11", "segment_ids": "seg-a"},
        {"id": "h12", "segment_ids": ["seg-a", 3]},
        {"id": "h13", "external_id": {"nested": 1}, "segment_ids": ["seg-a"]},
        "not a document",
    ]
    live = {"h1": "u-1", "h4": "0", "h6": "u-6", "h7": "u-7"}  # h7 was sent under another id
    for doc in docs:
        try:
            expected = _event_user_from_map_user(doc, settings, whitelisted, live)
        except MalformedUserError:
            with pytest.raises(MalformedUserError):
                event_user(doc, user_id_mapping, whitelisted, live)
            continue
        assert (doc["id"], event_user(doc, user_id_mapping, whitelisted, live)) == expected, doc
