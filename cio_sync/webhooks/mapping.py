"""From a Customer.io webhook payload to a Hull track event and the user it belongs to.

Pure functions, no I/O. Follows the original Hull connector's mapping (event names,
property renames, identity) and adds what it dropped: the webhook `event_id` as Hull's
`event_id` (Hull deduplicates on it, which makes resending safe), the webhook
`timestamp` as `created_at`, `href`/`link_id` on clicks and `failure_message` on
bounces and failures.

Two payload formats exist: the legacy Email Activity Webhooks carry `event_type`; the
Reporting Webhooks carry `object_type` and `metric`, keyed here `<object_type>_<metric>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

LEGACY = "legacy"
REPORTING = "reporting"
MAX_EVENT_ID_LENGTH = 64  # webhook_inbox.event_id column; Customer.io sends 26-char ULIDs
# Inbox key of a body without a usable event_id: "sha256:" + 56 hex digits of the body's
# SHA-256 (224 bits), 63 characters, so it fits the event_id column and reads as what it is.
BODY_KEY_PREFIX = "sha256:"
BODY_KEY_HEX_DIGITS = 56
UNREADABLE = "not a Customer.io webhook this connector can read"

# Webhook key -> Hull event name, as the original connector named them.
HULL_EVENT_NAMES: dict[str, str] = {
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
    # Not in the original table (the reporting metric came later); it is an email
    # delivery failure like `email_failed`, so users want it next to the others.
    "email_undeliverable": "Email Undeliverable",
}

# Keys that are known and deliberately not sent, with the reason stored on the row.
IGNORED_KEYS: dict[str, str] = {
    "customer_cio_subscription_preferences_changed": (
        "subscription preference changes have no Hull event in the original connector's mapping"
    ),
}
MAPPED_OBJECT_TYPES = frozenset({"email", "customer"})

# Properties copied as they are (when present and not null), per format.
LEGACY_PROPERTIES = ("email_id", "customer_id", "campaign_id", "campaign_name", "template_id", "tags")
REPORTING_PROPERTIES = ("campaign_id", "content_id")
# Added on top of the original connector's properties, in both formats.
DETAIL_PROPERTIES = ("href", "link_id", "failure_message")

_ANGLE_ADDRESS = re.compile(r"<\s*([^<>\s@]+@[^<>\s@]+)\s*>")
_BARE_ADDRESS = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")


class InvalidPayload(ValueError):
    """The body is not a Customer.io webhook this connector understands; says why."""


@dataclass(frozen=True)
class Mapped:
    """Ready to send: `claims` identify the Hull user, `event` is the track body."""

    claims: dict[str, str]
    event: dict[str, Any]


@dataclass(frozen=True)
class Ignored:
    """Deliberately not sent: another channel, an unmapped metric, or a body that is not a
    webhook this connector can read (invalid JSON, unknown format, no event_id...)."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """A webhook that should reach Hull but cannot as it is (no identity); kept for a
    person to look at."""

    reason: str


MappingResult = Mapped | Ignored | Failed


# ----- validation ----------------------------------------------------------------------


def parse_payload(body: bytes | str) -> dict[str, Any]:
    """Decodes and validates a request body; raises `InvalidPayload` with the reason."""
    payload = decode_json(body)
    validate_payload(payload)
    return payload


def decode_json(body: bytes | str) -> Any:
    """The JSON value of a body; raises `InvalidPayload` (and nothing else) with the reason."""
    if isinstance(body, bytes):
        # Explicitly UTF-8 (JSON's only interchange encoding): json.loads would also guess
        # UTF-16/32 from bytes, and the inbox stores the body as UTF-8 text.
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPayload("body is not UTF-8 text") from None
    try:
        return json.loads(body)
    except RecursionError:
        # json raises this, not a ValueError, for arrays or objects nested a few thousand deep.
        raise InvalidPayload("body is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        # The message names a position or a limit, never the body's content.
        raise InvalidPayload(f"body is not valid JSON ({exc})") from None


def usable_event_id(value: Any) -> str | None:
    """`value` if it can serve as the inbox key and Hull's `event_id`, else None."""
    if (
        isinstance(value, str)
        and value.strip()
        and len(value) <= MAX_EVENT_ID_LENGTH
        and value.isprintable()  # no NUL (PostgreSQL text refuses it) or other controls
    ):
        return value
    return None


def dedupe_key(body: bytes) -> str:
    """The `webhook_inbox.event_id` a signed request is stored under: its `event_id` when it
    has a usable one (Customer.io's retries of one webhook share it), otherwise a digest of
    the body (`sha256:` + 56 hex digits), so a retried byte-identical body is still stored
    once. Never raises, whatever the body."""
    try:
        payload = decode_json(body)
    except InvalidPayload:
        payload = None
    if isinstance(payload, dict):
        event_id = usable_event_id(payload.get("event_id"))
        if event_id is not None:
            return event_id
    return BODY_KEY_PREFIX + hashlib.sha256(body).hexdigest()[:BODY_KEY_HEX_DIGITS]


def validate_payload(payload: Any) -> str:
    """Returns the payload's format (`LEGACY` or `REPORTING`) or raises `InvalidPayload`."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body is not a JSON object")
    payload_format = detect_format(payload)
    if payload_format is None:
        raise InvalidPayload(
            "body is neither a Customer.io reporting webhook (object_type and metric) "
            "nor a legacy email activity webhook (event_type)"
        )
    event_id = payload.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise InvalidPayload("event_id is missing or not a string")
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise InvalidPayload(f"event_id is longer than {MAX_EVENT_ID_LENGTH} characters")
    if usable_event_id(event_id) is None:
        raise InvalidPayload("event_id contains control characters")
    if payload.get("data") is not None and not isinstance(payload["data"], dict):
        raise InvalidPayload("data is not a JSON object")
    return payload_format


def detect_format(payload: dict[str, Any]) -> str | None:
    if _non_empty_string(payload.get("event_type")):
        return LEGACY
    if _non_empty_string(payload.get("object_type")) and _non_empty_string(payload.get("metric")):
        return REPORTING
    return None


def event_key(payload: dict[str, Any]) -> str:
    """`email_opened` for both `{"event_type": "email_opened"}` and
    `{"object_type": "email", "metric": "opened"}`."""
    if detect_format(payload) == LEGACY:
        return payload["event_type"]
    return f"{payload['object_type']}_{payload['metric']}"


# ----- mapping -------------------------------------------------------------------------


def map_stored_payload(body: str | bytes, user_id_mapping: str) -> MappingResult:
    """Maps a payload as stored in the inbox (text, or the raw bytes of a body that was not
    storable as text). Anything unreadable is `Ignored` with the reason, never raised, so
    one bad row cannot stop a drain: the intake stores every signed request, whatever its
    shape, and this is where such a request ends."""
    try:
        payload = parse_payload(body)
    except InvalidPayload as exc:
        return Ignored(f"{UNREADABLE}: {exc}")
    return map_webhook(payload, user_id_mapping)


def map_webhook(payload: dict[str, Any], user_id_mapping: str) -> MappingResult:
    try:
        payload_format = validate_payload(payload)
    except InvalidPayload as exc:
        return Ignored(f"{UNREADABLE}: {exc}")

    key = event_key(payload)
    if payload_format == REPORTING and payload["object_type"] not in MAPPED_OBJECT_TYPES:
        return Ignored(f"{payload['object_type']} messages are not mapped (only email and customer events)")
    if key in IGNORED_KEYS:
        return Ignored(IGNORED_KEYS[key])
    event_name = HULL_EVENT_NAMES.get(key)
    if event_name is None:
        return Ignored(f"no Hull event is mapped for {key}")

    data = payload.get("data") or {}
    claims = identity_claims(data, user_id_mapping)
    if not claims:
        return Failed(_no_identity_reason(user_id_mapping))

    if payload_format == LEGACY:
        properties = legacy_properties(data)
    else:
        properties = reporting_properties(data)
    event: dict[str, Any] = {
        "event": event_name,
        "properties": properties,
        "event_id": payload["event_id"],
        "source": "customerio",
        "type": "email",
        # As the original connector: these events have no client, hence no IP or page.
        "ip": "0",
        "url": None,
        "referer": None,
    }
    created_at = unix_to_iso(payload.get("timestamp"))
    if created_at is not None:
        event["created_at"] = created_at
    return Mapped(claims=claims, event=event)


def identity_claims(data: dict[str, Any], user_id_mapping: str) -> dict[str, str]:
    """Hull `io.hull.asUser` claims: the Customer.io id under the Hull attribute named by
    `user_id_mapping` (`external_id` or `id`; any other mapping cannot be reversed, so
    only the email is used), plus the email address. Empty when neither is known."""
    claims: dict[str, str] = {}
    customer_id = customer_id_of(data)
    if customer_id and user_id_mapping in ("external_id", "id"):
        claims[user_id_mapping] = customer_id
    email = email_of(data)
    if email:
        claims["email"] = email
    return claims


def customer_id_of(data: dict[str, Any]) -> str | None:
    # `identifiers.id` first: `customer_id` is deprecated and empty for deleted people.
    found = data.get("identifiers")
    identifiers: dict[str, Any] = found if isinstance(found, dict) else {}
    for value in (identifiers.get("id"), data.get("customer_id")):
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def email_of(data: dict[str, Any]) -> str | None:
    # `identifiers.email` is the reporting format's own copy of the person's address;
    # it identifies the user when an event carries no recipient.
    found = data.get("identifiers")
    identifiers: dict[str, Any] = found if isinstance(found, dict) else {}
    for value in (data.get("email_address"), data.get("recipient"), identifiers.get("email")):
        email = extract_email(value)
        if email:
            return email
    return None


def extract_email(value: Any) -> str | None:
    """`"Sven <sven@example.com>"` -> `sven@example.com`; a bare address as it is; else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _ANGLE_ADDRESS.search(text)
    if match:
        return match.group(1)
    if _BARE_ADDRESS.match(text):
        return text
    return None


def legacy_properties(data: dict[str, Any]) -> dict[str, Any]:
    properties = _copy_present(data, LEGACY_PROPERTIES)
    properties.update(_renamed(data, subject="email_subject"))
    email = extract_email(data.get("email_address"))
    if email:
        properties["email_address"] = email
    properties.update(_copy_present(data, DETAIL_PROPERTIES))
    return properties


def reporting_properties(data: dict[str, Any]) -> dict[str, Any]:
    properties = _copy_present(data, REPORTING_PROPERTIES)
    customer_id = customer_id_of(data)
    if customer_id:
        properties["customer_id"] = customer_id
    properties.update(_renamed(data, delivery_id="email_id", subject="email_subject"))
    # Email objects carry `recipient`, customer objects `email_address`.
    email = extract_email(data.get("recipient")) or extract_email(data.get("email_address"))
    if email:
        properties["email_address"] = email
    properties.update(_copy_present(data, DETAIL_PROPERTIES))
    return properties


def unix_to_iso(value: Any) -> str | None:
    """Webhook `timestamp` (unix seconds) as Hull's ISO 8601 UTC; None if absent or bad."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _copy_present(data: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: data[name] for name in names if data.get(name) is not None}


def _renamed(data: dict[str, Any], **renames: str) -> dict[str, Any]:
    return {new: data[old] for old, new in renames.items() if data.get(old) is not None}


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _no_identity_reason(user_id_mapping: str) -> str:
    if user_id_mapping in ("external_id", "id"):
        return "no identity: the webhook has neither a customer id nor an email address"
    return (
        f"no identity: the webhook has no email address, and user_id_mapping "
        f"'{user_id_mapping}' does not let a Customer.io id name a Hull user"
    )
