"""The webhook -> Hull mapping, checked against the original connector's table
(written out here on purpose, not imported from the code under test)."""

import hashlib
import json

import pytest

from cio_sync.webhooks.mapping import (
    LEGACY,
    REPORTING,
    Failed,
    Ignored,
    InvalidPayload,
    Mapped,
    dedupe_key,
    extract_email,
    map_stored_payload,
    map_webhook,
    parse_payload,
    validate_payload,
)
from tests.support.webhooks import legacy_payload, load_fixture, reporting_payload

# The original connector's table: webhook key -> Hull event.
ORIGINAL_TABLE = {
    "customer_subscribed": "Customer Subscribed",
    "customer_unsubscribed": "Customer Unsubscribed",
    "email_attempted": "Email Attempted",
    "email_bounced": "Email Bounced",
    "email_clicked": "Email Link Clicked",
    "email_converted": "Email Converted",
    "email_deferred": "Email Deferred",
    "email_delivered": "Email Delivered",
    "email_drafted": "Email Drafted",
    "email_dropped": "Email Dropped",
    "email_failed": "Email Failed",
    "email_opened": "Email Opened",
    "email_sent": "Email Sent",
    "email_spammed": "Email Marked as Spam",
    "email_unsubscribed": "Unsubscribed",
}
# Reporting webhook metrics per object type (Customer.io's list) that the table covers.
REPORTING_EMAIL_METRICS = [
    "drafted",
    "attempted",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "unsubscribed",
    "bounced",
    "dropped",
    "spammed",
    "failed",
]
REPORTING_CUSTOMER_METRICS = ["subscribed", "unsubscribed"]
COMMON_CONTEXT = {"source": "customerio", "type": "email", "ip": "0", "url": None, "referer": None}


@pytest.mark.parametrize("event_type", sorted(ORIGINAL_TABLE))
def test_every_legacy_event_type_maps_to_the_original_event_name(event_type):
    payload = legacy_payload(event_type)
    result = map_webhook(payload, "external_id")

    assert isinstance(result, Mapped)
    assert result.claims == {"external_id": "cust-1", "email": "jane@example.com"}
    assert result.event == {
        "event": ORIGINAL_TABLE[event_type],
        "event_id": payload["event_id"],
        "created_at": "2020-03-26T20:25:48Z",
        "properties": {
            "email_address": "jane@example.com",
            "email_id": "ZI6aBAABYnJ3muVry9xcBjL7Aj-e",
            "customer_id": "cust-1",
            "campaign_id": "12",
            "campaign_name": "Trial welcome",
            "template_id": "35",
            "email_subject": "Welcome",
        },
        **COMMON_CONTEXT,
    }


@pytest.mark.parametrize(
    "object_type, metric",
    [("email", m) for m in REPORTING_EMAIL_METRICS] + [("customer", m) for m in REPORTING_CUSTOMER_METRICS],
)
def test_every_reporting_metric_in_the_table_maps_to_the_original_event_name(object_type, metric):
    payload = reporting_payload(object_type, metric)
    result = map_webhook(payload, "external_id")

    assert isinstance(result, Mapped)
    assert result.event["event"] == ORIGINAL_TABLE[f"{object_type}_{metric}"]
    assert result.event["event_id"] == payload["event_id"]
    assert result.event["created_at"] == "2020-03-26T20:25:48Z"
    assert {k: result.event[k] for k in COMMON_CONTEXT} == COMMON_CONTEXT
    assert result.claims == {"external_id": "cust-1", "email": "jane@example.com"}
    expected = {"customer_id": "cust-1", "email_address": "jane@example.com"}
    if object_type == "email":
        expected.update(campaign_id=9, email_id="RPILAgABcRhIBqSp7kiPekGBIeVh", email_subject="Welcome")
    assert result.event["properties"] == expected


def test_reporting_undeliverable_is_kept_as_an_email_failure():
    result = map_webhook(reporting_payload("email", "undeliverable", failure_message="mailbox full"), "id")
    assert isinstance(result, Mapped)
    assert result.event["event"] == "Email Undeliverable"
    assert result.event["properties"]["failure_message"] == "mailbox full"


def test_original_connectors_documented_example():
    # From the original connector's documentation: mapping `id`, reporting email/opened.
    result = map_webhook(load_fixture("reporting-email-opened.json"), "id")
    assert result.claims == {"id": "1", "email": "test@example.com"}
    assert result.event["event"] == "Email Opened"
    assert result.event["properties"] == {
        "campaign_id": 9,
        "customer_id": "1",
        "email_address": "test@example.com",
        "email_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
        "email_subject": "hello",
    }
    assert result.event["event_id"] == "01E4C8BES586H0A5PFK1ARB9JW"
    assert result.event["created_at"] == "2020-03-26T20:25:48Z"


def test_clicks_carry_href_and_link_id():
    result = map_webhook(load_fixture("reporting-email-clicked.json"), "external_id")
    assert result.event["event"] == "Email Link Clicked"
    assert result.event["properties"]["href"] == "http://google.com"
    assert result.event["properties"]["link_id"] == 1
    assert result.claims == {"external_id": "0200102", "email": "test@example.com"}


def test_legacy_real_payload_extracts_the_address_and_drops_variables():
    result = map_webhook(load_fixture("legacy-email-opened.json"), "external_id")
    assert result.claims == {"external_id": "5abd08c4aede0354c3000363", "email": "sven+dt7@example.com"}
    assert result.event["properties"]["email_address"] == "sven+dt7@example.com"
    assert result.event["properties"]["email_subject"] == "How trials work"
    assert "variables" not in result.event["properties"]


def test_reporting_customer_subscribed_real_payload():
    result = map_webhook(load_fixture("reporting-customer-subscribed.json"), "external_id")
    assert result.event["event"] == "Customer Subscribed"
    assert result.claims == {"external_id": "42", "email": "test@example.com"}
    assert result.event["properties"] == {"customer_id": "42", "email_address": "test@example.com"}


@pytest.mark.parametrize(
    "event_type, field",
    [("email_bounced", "failure_message"), ("email_failed", "failure_message"), ("email_clicked", "href")],
)
def test_details_the_original_dropped_are_kept_in_legacy_payloads(event_type, field):
    result = map_webhook(legacy_payload(event_type, **{field: "detail"}), "external_id")
    assert result.event["properties"][field] == "detail"


def test_null_values_are_not_sent_as_properties():
    result = map_webhook(load_fixture("legacy-email-drafted-noemail.json"), "external_id")
    assert "email_subject" not in result.event["properties"]
    assert "email_address" not in result.event["properties"]


# ----- identity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping, expected",
    [
        ("external_id", {"external_id": "cust-1", "email": "jane@example.com"}),
        ("id", {"id": "cust-1", "email": "jane@example.com"}),
        ("email", {"email": "jane@example.com"}),
        ("traits_cio_id", {"email": "jane@example.com"}),
    ],
)
def test_identity_follows_user_id_mapping(mapping, expected):
    assert map_webhook(legacy_payload("email_opened"), mapping).claims == expected


def test_identifiers_id_wins_over_deprecated_customer_id():
    payload = reporting_payload("email", "opened", customer_id="old", identifiers={"id": "new"})
    result = map_webhook(payload, "external_id")
    assert result.claims["external_id"] == "new"
    assert result.event["properties"]["customer_id"] == "new"


def test_deleted_person_with_empty_customer_id_is_identified_by_email():
    payload = reporting_payload("email", "opened", customer_id="", identifiers={"id": None, "email": None})
    assert map_webhook(payload, "external_id").claims == {"email": "jane@example.com"}


def test_identifiers_email_is_used_when_no_recipient_is_given():
    payload = reporting_payload("email", "opened", recipient=None, identifiers={"email": "x@example.com"})
    assert map_webhook(payload, "email").claims == {"email": "x@example.com"}


@pytest.mark.parametrize(
    "payload, mapping",
    [
        (legacy_payload("email_opened", customer_id=None, email_address=None), "external_id"),
        (legacy_payload("email_opened", customer_id="", email_address="not an address"), "id"),
        (reporting_payload("email", "opened", customer_id=None, identifiers=None, recipient=None), "external_id"),
        # A customer id is no identity when the mapping cannot name a Hull user with it.
        (legacy_payload("email_opened", email_address=None), "email"),
    ],
    ids=["legacy", "unparseable-address", "reporting", "id-not-mappable"],
)
def test_no_identity_fails_with_the_reason(payload, mapping):
    result = map_webhook(payload, mapping)
    assert isinstance(result, Failed)
    assert result.reason.startswith("no identity")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Sven <sven+dt7@example.com>", "sven+dt7@example.com"),
        ('"Doe, Jane" <jane@example.com>', "jane@example.com"),
        ("<jane@example.com>", "jane@example.com"),
        ("  jane@example.com ", "jane@example.com"),
        ("Jane Doe", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_extract_email(value, expected):
    assert extract_email(value) == expected


# ----- not mapped: ignored, never failed or dropped --------------------------------------


@pytest.mark.parametrize(
    "payload, reason",
    [
        (reporting_payload("email", "exploded"), "no Hull event is mapped for email_exploded"),
        (reporting_payload("sms", "sent"), "sms messages are not mapped"),
        (reporting_payload("push", "opened", customer_id=None, identifiers=None), "push messages are not mapped"),
        (reporting_payload("customer", "cio_subscription_preferences_changed"), "subscription preference"),
        (legacy_payload("email_vanished"), "no Hull event is mapped for email_vanished"),
    ],
    ids=["unknown-metric", "sms", "push-without-identity", "preferences", "unknown-legacy"],
)
def test_unmapped_payloads_are_ignored_with_a_reason(payload, reason):
    result = map_webhook(payload, "external_id")
    assert isinstance(result, Ignored)
    assert reason in result.reason


# ----- validation -----------------------------------------------------------------------


def test_format_detection():
    assert validate_payload(legacy_payload("email_opened")) == LEGACY
    assert validate_payload(reporting_payload("email", "opened")) == REPORTING


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event_id": "X", "metric": "opened", "data": {}}', "neither"),
        (b'{"object_type": "email", "metric": "opened"}', "event_id"),
        (b'{"event_id": 12, "event_type": "email_opened"}', "event_id"),
        (json.dumps({"event_id": "X" * 65, "event_type": "email_opened"}).encode(), "longer than 64"),
        (b'{"event_id": "X", "event_type": "email_opened", "data": [1]}', "data is not a JSON object"),
        (b'{"event_id": "a\\u0000b", "event_type": "email_opened"}', "control characters"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"1" * 5000, "not valid JSON"),
    ],
)
def test_invalid_bodies_are_refused_with_a_reason(body, reason):
    with pytest.raises(InvalidPayload, match=reason):
        parse_payload(body)


@pytest.mark.parametrize(
    "stored, reason",
    [
        ("{oops", "body is not valid JSON"),
        (b"\xff\xfe{}", "body is not UTF-8 text"),  # raw bytes of a body stored encoded
        ('{"event_id": "X", "name": "Email Opened"}', "neither a Customer.io reporting webhook"),
        ('{"object_type": "email", "metric": "opened", "data": {}}', "event_id is missing"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["invalid-json", "not-utf8", "unknown-format", "no-event-id", "deep-nesting"],
)
def test_an_unreadable_stored_payload_is_ignored_with_the_reason_instead_of_raising(stored, reason):
    result = map_stored_payload(stored, "external_id")
    assert isinstance(result, Ignored)
    assert result.reason.startswith("not a Customer.io webhook this connector can read: ")
    assert reason in result.reason


def test_dedupe_key_is_the_event_id_when_usable():
    payload = legacy_payload("email_opened")
    assert dedupe_key(json.dumps(payload).encode()) == payload["event_id"]
    # Even when the rest is not a format the drain maps: retries must still dedupe on it.
    assert dedupe_key(b'{"event_id": "01E4C8BES586H0A5PFK1ARB9JW", "new": 1}') == "01E4C8BES586H0A5PFK1ARB9JW"


@pytest.mark.parametrize(
    "body",
    [
        b"{oops",
        b"",
        b"\xff",
        b"[1]",
        b'{"event_id": 12}',
        b'{"event_id": "   "}',
        b'{"event_id": "a\\u0000b"}',
        json.dumps({"event_id": "X" * 65}).encode(),
        b"[" * 100_000,
    ],
    ids=["invalid-json", "empty", "not-utf8", "array", "numeric", "blank", "control-char", "too-long", "deep"],
)
def test_dedupe_key_of_a_body_without_a_usable_event_id_is_a_digest_of_the_body(body):
    key = dedupe_key(body)
    assert key == "sha256:" + hashlib.sha256(body).hexdigest()[:56]
    assert len(key) <= 64  # the inbox's event_id column
    assert dedupe_key(body) == key and dedupe_key(body + b" ") != key


def test_missing_timestamp_leaves_created_at_to_hull():
    payload = legacy_payload("email_opened")
    del payload["timestamp"]
    assert "created_at" not in map_webhook(payload, "external_id").event
