"""How a Hull user becomes Customer.io attributes. Pure functions: no HTTP, no Prefect, no SQL."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import cached_property, lru_cache
from typing import Any

import orjson

from cio_sync.rules.changes import attribute_digests, canonical_json
from cio_sync.settings import ConnectorSettings

# Traits this connector writes back to Hull. Syncing them out again would change every
# user's hash after each write-back and re-send everyone on every run.
OWN_TRAIT_NAMESPACE = "customerio/"
DATE_SUFFIXES = ("_at", "_date")
# Sent for every user (or carrying identity): never in the names kept per user, never removed.
ALWAYS_SENT = frozenset({"id", "email", "created_at", "hull_segments", "anonymous_id"})
# Customer.io removes an attribute sent with an empty string value.
REMOVED = ""
# Customer.io reserves attribute names starting with `_` (`_timestamp`, `_update`, ...): one
# in an identify call fails the whole call, so such names are dropped like other invalid ones.
RESERVED_PREFIX = "_"
SEGMENTS_ATTRIBUTE = "hull_segments"


@dataclass
class MappedUser:
    hull_id: str
    cio_id: str | None
    email: str | None
    attributes: dict[str, Any]
    whitelisted_segment_ids: list[str]
    id_error: str | None = None  # set when the id value breaks a limit
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (attribute, reason)
    indexed_at: int | None = None  # Hull's indexed_at, unix seconds: Customer.io's `_timestamp`
    segments_left_out: int = 0  # names cut from the end of `hull_segments` to fit the value limit

    @cached_property
    def attributes_hash(self) -> str:
        # Cached: the diff and the state row of a synced user both need it, and the mapping
        # never changes `attributes` after it built them.
        return attributes_hash(self.attributes)

    @cached_property
    def attribute_digests(self) -> dict[str, str]:
        """Name → short digest of each value (cio_sync/rules/changes.py), kept in state."""
        return attribute_digests(self.attributes)


class MalformedUserError(ValueError):
    """A user document from Hull that cannot be read at all."""


NOT_A_JSON_NUMBER = "NaN or Infinity, which JSON cannot carry"


def attribute_name(hull_name: str) -> str:
    """`traits_a/b` → `a-b`, `account.x/y` → `account_x-y`, `id` → `hull_id`."""
    if hull_name.startswith("account."):
        return "account_" + hull_name[len("account.") :].replace("/", "-")
    name = hull_name[len("traits_") :] if hull_name.startswith("traits_") else hull_name
    if name == "id":
        return "hull_id"
    return name.replace("/", "-")


def is_own_trait(hull_name: str) -> bool:
    name = hull_name[len("traits_") :] if hull_name.startswith("traits_") else hull_name
    return name.startswith(OWN_TRAIT_NAMESPACE)


def to_unix_seconds(value: Any) -> Any:
    """ISO dates/datetimes become integer unix seconds; anything else is left as it is."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) < 10 or not text[:4].isdigit():
            return value
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        return value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def is_date_attribute(name: str) -> bool:
    return name == "created_at" or name.endswith(DATE_SUFFIXES)


def byte_length(value: Any) -> int:
    if isinstance(value, str):
        # ASCII text is one byte a character; isascii() is O(1) and spares an encode per value.
        return len(value) if value.isascii() else len(value.encode("utf-8"))
    if isinstance(value, (dict, list, tuple)):
        # allow_nan=False: raises ValueError for NaN/Infinity inside, which JSON cannot hold.
        return len(
            json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False).encode("utf-8")
        )
    if isinstance(value, (int, float)):
        return len(str(value))  # numbers (and bools) print as ASCII
    return len(str(value).encode("utf-8"))


def attributes_hash(attributes: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(attributes)).hexdigest()


def tracked_names(attributes: dict[str, Any]) -> list[str]:
    """The names kept in state for a user whose attributes Customer.io accepted."""
    return sorted(name for name in attributes if name not in ALWAYS_SENT)


def removed_names(previous: list[str] | None, attributes: dict[str, Any]) -> list[str]:
    """Names Customer.io accepted last time that are not sent now: the trait is gone from
    Hull (or null), no longer whitelisted, or its value now breaks a limit."""
    return sorted(name for name in previous or () if name not in attributes and name not in ALWAYS_SENT)


def latest_anonymous_id(user: dict[str, Any]) -> str | None:
    """The user's most recent Hull anonymous id: the last of `anonymous_ids` (Hull appends
    new ones). Customer.io takes one `anonymous_id` per person; the most recent one is the
    one most likely to have anonymous activity still within Customer.io's 30 days."""
    anonymous_ids = user.get("anonymous_ids")
    if not isinstance(anonymous_ids, list):
        return None
    for value in reversed(anonymous_ids):
        if isinstance(value, str) and value:
            return value
    return None


def lookup(user: dict[str, Any], hull_name: str) -> tuple[bool, Any]:
    """Finds a configured attribute in a user report: `email`, `traits_x`, `x` (a trait), `account.x`."""
    if hull_name.startswith("account."):
        account = user.get("account") or {}
        key = hull_name[len("account.") :]
        return (key in account, account.get(key))
    if hull_name in user:
        return True, user[hull_name]
    trait = f"traits_{hull_name}"
    if trait in user:
        return True, user[trait]
    return False, None


def resolve_segments(configured: list[str], segments: list[dict[str, Any]]) -> tuple[set[str], list[str]]:
    """Settings may name segments by id or by name. Returns (ids, entries not found)."""
    by_id = {s["id"]: s for s in segments}
    by_name: dict[str, list[str]] = {}
    for s in segments:
        by_name.setdefault(s.get("name", ""), []).append(s["id"])
    ids: set[str] = set()
    unknown = []
    for entry in configured:
        if entry in by_id:
            ids.add(entry)
        elif entry in by_name:
            ids.update(by_name[entry])
        else:
            unknown.append(entry)
    return ids, unknown


# ----- the unchanged fast path ----------------------------------------------------------------
# A user whose synced Hull fields and mapping settings are exactly those of the last mapping
# Customer.io accepted maps to the same attributes again: the diff can call it unchanged
# without mapping it (cio_sync/rules/plan.py). `source_fields` covers every field `map_user`
# reads except `indexed_at` (not part of the attributes); `mapping_fingerprint` covers the
# settings and segments that shape the mapping, and MAPPING_VERSION the code itself.

# Bump whenever `map_user` (or what it calls) would map the same document differently: every
# stored digest then stops matching and the next run maps everyone again.
MAPPING_VERSION = "1"
# Settings that cannot change what `map_user` returns nor which decision a user gets. Every
# other setting, present or future, is part of the fingerprint: a change re-maps everyone.
NOT_MAPPING_SETTINGS = frozenset(
    {
        "rate_limit_per_second",
        "push_concurrency",
        "users_per_batch",
        "events_per_batch",
        "events_overlap_minutes",
        "events_initial_lookback_hours",
        "events_future_tolerance_minutes",
        "users_overlap_seconds",
        "failed_batch_auto_retries",
        "max_deletions_per_run",
        "sync_log_values",
        "sync_log_retention_days",
    }
)


def mapping_fingerprint(
    settings: ConnectorSettings, segment_names: dict[str, str], whitelisted_ids: AbstractSet[str]
) -> bytes:
    """32 bytes that change when anything but the user document could change a mapping."""
    shaping = {k: v for k, v in settings.model_dump(mode="json").items() if k not in NOT_MAPPING_SETTINGS}
    payload = [MAPPING_VERSION, shaping, sorted(segment_names.items()), sorted(whitelisted_ids)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode("utf-8")).digest()


@lru_cache(maxsize=64)
def source_keys(user_id_mapping: str, hull_names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(top-level keys, `account` keys) of a user document that `map_user` may read."""
    top = ["id", "segment_ids", "email", "created_at", "anonymous_ids"]
    account: list[str] = []
    for name in (user_id_mapping, *hull_names):
        if name.startswith("account."):
            account.append(name[len("account.") :])
        else:
            top += [name, f"traits_{name}"]
    return tuple(dict.fromkeys(top)), tuple(dict.fromkeys(account))


def source_fields(user: dict[str, Any], keys: tuple[tuple[str, ...], tuple[str, ...]]) -> bytes | None:
    """The fields of `user` that `map_user` reads (`keys`, from `source_keys`) as bytes that
    differ whenever the fields do; None when the document cannot be read safely (the user is
    then always mapped). Present-but-null differs from absent; 1, 1.0 and True differ. Compact
    JSON (orjson, ~1 µs a user); NaN and Infinity, which it would write as null, and any value
    that is not plain JSON, go through `repr` instead. A reordered nested object costs only a
    mapping."""
    top, account_keys = keys
    picked = {k: user[k] for k in top if k in user}
    account_part: dict[str, Any] | None = None
    if account_keys:
        account = user.get("account")
        if account:
            if not isinstance(account, dict):
                return None
            account_part = {k: account[k] for k in account_keys if k in account}
    fields = [picked, account_part]
    try:
        data: bytes = orjson.dumps(fields, option=_STRICT)
    except TypeError:
        return _repr_fields(fields)
    if b"null" in data and _has_non_finite(fields):
        return _repr_fields(fields)
    return b"j" + data


# Values orjson would serialise like plain JSON ones (datetimes as strings, subclasses and
# dataclasses as their base) raise instead, and take the `repr` path.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


def _repr_fields(fields: list[Any]) -> bytes | None:
    try:
        return b"r" + repr(fields).encode("utf-8", "surrogatepass")
    except Exception:  # a value whose repr fails: not worth the risk
        return None


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def source_seal(fingerprint: bytes, fields: bytes, attributes_hash: str) -> str:
    """What state keeps next to `attributes_hash` (`user_state.source_digest`): the source
    fields, the mapping fingerprint and that very hash in one digest, so a row whose hash was
    changed or cleared by anything else never matches."""
    digest = hashlib.blake2b(fingerprint, digest_size=16)
    digest.update(fields)
    digest.update(attributes_hash.encode("ascii"))
    return digest.hexdigest()


def document_segment_ids(user: Any) -> list[str]:
    """The segment ids of a Hull user document, once the document passed the checks every reader
    of one makes (`map_user`, the events phase's `user_identity`); raises `MalformedUserError`
    (the user is skipped as `malformed`, with the reason) instead of failing the page."""
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
        raise MalformedUserError("user document has no Hull id")
    segment_ids = user.get("segment_ids") or []
    if not isinstance(segment_ids, list):
        raise MalformedUserError("segment_ids is not a list")
    if not all(type(s) is str for s in segment_ids):  # sorting them, or a set of them, would raise
        raise MalformedUserError("segment_ids holds something other than segment ids (strings)")
    return segment_ids


def map_user(
    user: dict[str, Any],
    settings: ConnectorSettings,
    segment_names: dict[str, str],
    whitelisted_ids: AbstractSet[str],
) -> MappedUser:
    segment_ids = document_segment_ids(user)
    dropped: list[tuple[str, str]] = []
    _found, id_value = lookup(user, settings.user_id_mapping)
    cio_id = None if id_value in (None, "") else str(id_value)
    id_error = None
    if isinstance(id_value, (dict, list, bool)) or (isinstance(id_value, float) and not math.isfinite(id_value)):
        id_error = f"id value is not a string or a number (a {type(id_value).__name__})"
    elif cio_id is not None and byte_length(cio_id) > settings.max_identifier_value_length:
        id_error = f"id value is longer than {settings.max_identifier_value_length} bytes"

    email = user.get("email") or None
    attributes: dict[str, Any] = {}
    if cio_id is not None:
        attributes["id"] = cio_id
    if email is not None:
        attributes["email"] = email
    if user.get("created_at") is not None:
        attributes["created_at"] = to_unix_seconds(user["created_at"])
    max_value_length = settings.max_attribute_value_length
    names: list[str] = sorted(segment_names.get(s, s) for s in segment_ids)
    segments, segments_left_out = fit_list(names, max_value_length)
    attributes[SEGMENTS_ATTRIBUTE] = segments
    anonymous_id = latest_anonymous_id(user)
    if anonymous_id is not None and byte_length(anonymous_id) <= max_value_length:
        attributes["anonymous_id"] = anonymous_id  # links the person's earlier anonymous events
    # With removal on, a null is a removed trait (Hull removes a trait by setting it to null):
    # it is left out, and sent as "" if Customer.io had it (cio_sync/rules/plan.py).
    keep_nulls = not settings.unset_removed_attributes

    for hull_name, trait_key, account_key, name, is_date, name_too_long in _attribute_plan(
        tuple(settings.synchronized_attributes), settings.max_attribute_name_length
    ):
        # `lookup`, inlined with its keys precomputed: this loop runs for every attribute of
        # every user read, changed or not.
        if account_key is not None:
            account = user.get("account") or {}
            if account_key not in account:
                continue
            value = account[account_key]
        elif hull_name in user:
            value = user[hull_name]
        elif trait_key in user:
            value = user[trait_key]
        else:
            continue
        if is_date:
            value = to_unix_seconds(value)
        if value is None and not keep_nulls:
            continue
        if name_too_long:
            dropped.append((name, f"name longer than {settings.max_attribute_name_length} bytes"))
            continue
        if name.startswith(RESERVED_PREFIX):
            dropped.append((name, "names starting with _ are reserved by Customer.io"))
            continue
        if value is not None:
            if type(value) is str:
                size = len(value) if value.isascii() else len(value.encode("utf-8"))
            else:
                try:
                    if type(value) is float and not math.isfinite(value):
                        raise ValueError(value)
                    size = byte_length(value)
                except ValueError:  # Hull's JSON may hold NaN/Infinity: Customer.io's cannot
                    dropped.append((name, NOT_A_JSON_NUMBER))
                    continue
            if size > max_value_length:
                dropped.append((name, f"value longer than {max_value_length} bytes"))
                continue
        attributes[name] = value

    return MappedUser(
        hull_id=user["id"],
        cio_id=cio_id,
        email=email,
        attributes=attributes,
        whitelisted_segment_ids=sorted(s for s in segment_ids if s in whitelisted_ids),
        id_error=id_error,
        dropped=dropped,
        indexed_at=_unix_or_none(user.get("indexed_at")),
        segments_left_out=segments_left_out,
    )


def _unix_or_none(value: Any) -> int | None:
    if isinstance(value, str):
        return _iso_to_unix(value)  # users read together share few `indexed_at` values
    seconds = to_unix_seconds(value)
    return seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else None


@lru_cache(maxsize=1024)
def _iso_to_unix(value: str) -> int | None:
    seconds = to_unix_seconds(value)
    return seconds if isinstance(seconds, int) else None


def fit_list(values: list[str], max_bytes: int) -> tuple[list[str], int]:
    """`values` without as many items from the end as needed for its JSON to fit `max_bytes`
    (Customer.io's value limit applies to a list as a whole); returns (kept, left out)."""
    # A JSON string costs at most 6 bytes a character (an escape like \u001f) plus quotes and a
    # comma: most users' few segments fit without encoding anything.
    if 6 * sum(len(v) for v in values) + 3 * len(values) + 2 <= max_bytes or byte_length(values) <= max_bytes:
        return values, 0
    kept = list(values)
    while kept and byte_length(kept) > max_bytes:
        kept.pop()
    return kept, len(values) - len(kept)


@lru_cache(maxsize=64)
def _attribute_plan(hull_names: tuple[str, ...], max_name_length: int) -> tuple[tuple[Any, ...], ...]:
    """What map_user needs to know about each whitelisted attribute that does not depend on the
    user: (Hull name, `traits_` key, account key or None, Customer.io name, is a date, name too
    long). Worked out once per settings instead of once per user and attribute. Own traits,
    and `id`/`email` (always sent, never overridden by a whitelisted one), are left out."""
    plan = []
    for hull_name in hull_names:
        if is_own_trait(hull_name):
            continue
        name = attribute_name(hull_name)
        if name in ("id", "email"):
            continue
        account_key = hull_name[len("account.") :] if hull_name.startswith("account.") else None
        plan.append(
            (
                hull_name,
                f"traits_{hull_name}",
                account_key,
                name,
                is_date_attribute(name),
                byte_length(name) > max_name_length,
            )
        )
    return tuple(plan)


def chunk_attributes(attributes: dict[str, Any], max_per_call: int) -> list[dict[str, Any]]:
    """Splits one identify into calls of at most `max_per_call` attributes.

    `email` and `id` travel in the first call so the person is created with them.
    """
    ordered = sorted(attributes.items(), key=lambda kv: (kv[0] not in ("id", "email"), kv[0]))
    return [dict(ordered[i : i + max_per_call]) for i in range(0, len(ordered), max_per_call)] or [{}]
