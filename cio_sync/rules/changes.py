"""Which attributes a plan changes, told from per-attribute digests (no values are kept).

State keeps, per person, a short SHA-256 digest of each attribute value Customer.io last
accepted (`user_state.attribute_digests`). A new plan's attributes are digested the same way:
a name whose digest differs (or is new) changed; a name sent as "" was removed. Rows written
before digests were kept (or after an unset of segments) have none: every attribute counts as
changed, its old value unknown.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, NamedTuple

import orjson

DIGEST_CHARS = 12  # 48 bits: tells values apart, reveals nothing readable


def canonical_json(value: Any) -> bytes:
    """The value as compact, key-sorted JSON in UTF-8: the bytes a digest is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _scalar_json(value: Any) -> bytes | None:
    """`canonical_json` of a string, integer, finite float, bool or None, without the standard
    library's encoder (~8 µs a value; these are ~1 µs). None for anything else."""
    kind = type(value)
    if kind is str:
        try:
            # Escapes exactly as `json.dumps(..., ensure_ascii=False)` (tested code point by code point).
            return orjson.dumps(value)
        except orjson.JSONEncodeError:  # a lone surrogate: the standard library's verdict
            return None
    if kind is int:
        return int.__repr__(value).encode("ascii")
    if kind is float:
        return float.__repr__(value).encode("ascii") if math.isfinite(value) else None
    if value is None:
        return b"null"
    if kind is bool:
        return b"true" if value else b"false"
    return None


def value_digest(value: Any) -> str:
    canonical = _scalar_json(value)
    if canonical is None:
        canonical = canonical_json(value)
    return hashlib.sha256(canonical).hexdigest()[:DIGEST_CHARS]


def attribute_digests(attributes: dict[str, Any]) -> dict[str, str]:
    return {name: value_digest(value) for name, value in attributes.items()}


class Change(NamedTuple):  # a tuple: one per attribute of every inserted user, made cheaply
    name: str
    old: str | None  # digest of the value Customer.io last accepted; None: none was / unknown
    new: str | None  # digest of the value sent now; None: removed
    known: bool = True  # False: state keeps no digests, so the old value is unknown


def attribute_changes(
    previous: dict[str, str] | None, digests: dict[str, str], removed: list[str] | tuple[str, ...] = ()
) -> list[Change]:
    """The attributes whose digests (`attribute_digests` of the values sent now) differ from
    what Customer.io last accepted, plus the `removed` ones, sorted by name."""
    if previous is None:
        changes = [Change(name, None, digest, known=False) for name, digest in digests.items()]
        changes += [Change(name, None, None, known=False) for name in removed if name not in digests]
        return sorted(changes, key=lambda c: c.name)
    changes = [
        Change(name, previous.get(name), digest) for name, digest in digests.items() if previous.get(name) != digest
    ]
    changes += [Change(name, previous.get(name), None) for name in removed if name not in digests]
    return sorted(changes, key=lambda c: c.name)
