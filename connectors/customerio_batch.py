"""Customer.io's v2 batch wire format: entries, packing by bytes, and reading a 207.

Pure encoding, no HTTP and no business rules: `connectors/customerio.py` sends the bytes,
`cio_sync/pipeline/batch_push.py` decides what goes in them and what a failure means.

Limits: each entry at most 32 KB and each request body at most 500 KB, measured on the exact
bytes that are sent (entries are serialised once, and the request body is those bytes
joined). Both are read as decimal kilobytes, the stricter reading of Customer.io's
"500kb"/"32kb".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.transport import Response

try:  # installed with Prefect; optional here
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

MAX_REQUEST_BYTES = 500 * 1000
MAX_ENTRY_BYTES = 32 * 1000
_BODY_HEAD = b'{"batch":['
_BODY_TAIL = b"]}"
_EMPTY_BODY_BYTES = len(_BODY_HEAD) + len(_BODY_TAIL)


def encode_entry(entry: dict[str, Any]) -> bytes:
    # Compact and UTF-8 (not \u-escaped): the size measured is the size Customer.io counts.
    if orjson is not None:
        try:
            return orjson.dumps(entry, default=str)  # several times faster; same compact UTF-8 JSON
        except TypeError:
            pass  # e.g. a non-string key or an integer over 64 bits: the standard library copes
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def v2_identifiers(identifier: str, user_id_mapping: str) -> dict[str, str]:
    """Exactly one of id / email / cio_id, as v2 requires. v1 read a `cio_<x>` path
    identifier as Customer.io's own id; v2 takes it as `cio_id` without the prefix."""
    if identifier.startswith("cio_") and len(identifier) > 4:
        return {"cio_id": identifier[4:]}
    if user_id_mapping == "email":
        return {"email": identifier}
    return {"id": identifier}


# ----- entries -------------------------------------------------------------------------


@dataclass
class EncodedEntry:
    data: bytes
    owner: int  # index of the user/event (the "item") this entry belongs to
    label: str  # what the entry is, for error messages: "identify 2/3", "delete", "event"


@dataclass
class ItemEntries:
    """Everything one user (or one event) sends, encoded, in order; or why it cannot be sent."""

    entries: list[EncodedEntry] = field(default_factory=list)
    rejected: str | None = None  # set when an entry alone breaks the 32 KB limit

    @property
    def size(self) -> int:
        return sum(len(e.data) + 1 for e in self.entries)  # +1: the comma joining entries


def identify_entries(
    identifiers: dict[str, str], chunks: list[dict[str, Any]], max_entry_bytes: int = MAX_ENTRY_BYTES
) -> list[dict[str, Any]]:
    """Identify entries, one per attribute chunk (id and email first, as in v1); a chunk whose
    entry would pass `max_entry_bytes` is split further by halves, so only a single attribute
    too big for any entry is left oversized."""
    return [entry for entry, _ in identify_encoded(identifiers, chunks, max_entry_bytes)]


def identify_encoded(
    identifiers: dict[str, str],
    chunks: list[dict[str, Any]],
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    *,
    timestamp: int | None = None,
    update_only: bool = False,
) -> list[tuple[dict[str, Any], bytes]]:
    """identify_entries with each entry's bytes: every entry is serialised exactly once.
    `timestamp` orders updates sent close together (v2's entry-level `timestamp`, v1's
    `_timestamp`); `update_only` adds `_update: true` to the attributes (never creates)."""
    entries: list[tuple[dict[str, Any], bytes]] = []

    def add(chunk: list[tuple[str, Any]]) -> None:
        attributes = dict(chunk)
        if update_only:
            attributes["_update"] = True
        entry: dict[str, Any] = {"type": "person", "identifiers": identifiers, "action": "identify"}
        if timestamp is not None:
            entry["timestamp"] = timestamp
        entry["attributes"] = attributes
        data = encode_entry(entry)
        if len(chunk) > 1 and len(data) > max_entry_bytes:
            middle = len(chunk) // 2
            add(chunk[:middle])
            add(chunk[middle:])
        else:
            entries.append((entry, data))

    for chunk in chunks:
        add(list(chunk.items()))
    return entries


def person_entry(identifiers: dict[str, str], action: str) -> dict[str, Any]:
    """A person entry without attributes: `delete`, `suppress` or `unsuppress`."""
    return {"type": "person", "identifiers": identifiers, "action": action}


def merge_entry(primary: dict[str, str], secondary: dict[str, str]) -> dict[str, Any]:
    """The v2 `merge` action: `secondary` merged into `primary` (which must exist), then deleted."""
    return {"type": "person", "action": "merge", "primary": primary, "secondary": secondary}


def event_entry(identifiers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """A v1 event body (`name`, `type`, `id`, `timestamp`, `data`) as a v2 person entry:
    page views are their own action, and event data goes in `attributes`."""
    entry: dict[str, Any] = {
        "type": "person",
        "identifiers": identifiers,
        "action": "page" if body.get("type") == "page" else "event",
        "name": body["name"],
    }
    for key in ("id", "timestamp"):
        if body.get(key) is not None:
            entry[key] = body[key]
    entry["attributes"] = body.get("data") or {}
    return entry


def encode_item(
    encoded: list[tuple[dict[str, Any], bytes]], labels: list[str], owner: int, max_entry_bytes: int
) -> ItemEntries:
    item = ItemEntries()
    for (_entry, data), label in zip(encoded, labels):
        if len(data) > max_entry_bytes:
            # Nothing of this item is sent: a partial user would look synced but lack attributes.
            return ItemEntries(
                rejected=(
                    f"v2 batch {label} entry is {len(data):,} bytes, over Customer.io's limit of "
                    f"{max_entry_bytes:,} bytes per entry; not sent"
                )
            )
        item.entries.append(EncodedEntry(data, owner, label))
    return item


# ----- packing -------------------------------------------------------------------------


@dataclass
class BatchRequest:
    entries: list[EncodedEntry] = field(default_factory=list)
    size: int = _EMPTY_BODY_BYTES  # bytes of the body as it will be sent

    def room_for(self, nbytes: int, max_request_bytes: int) -> bool:
        # The first entry needs no comma; later ones do.
        return self.size + nbytes + (1 if self.entries else 0) <= max_request_bytes

    def add(self, entry: EncodedEntry) -> None:
        self.size += len(entry.data) + (1 if self.entries else 0)
        self.entries.append(entry)

    def body(self) -> bytes:
        return _BODY_HEAD + b",".join(e.data for e in self.entries) + _BODY_TAIL


def pack(items: Sequence[ItemEntries], max_request_bytes: int = MAX_REQUEST_BYTES) -> list[list[BatchRequest]]:
    """Packs items' entries into requests of at most `max_request_bytes`, first fit in item
    order. Returns chains: the requests of one chain must be sent in order (one item's
    entries span them); different chains are independent. Rejected items are left out."""
    chains: list[list[BatchRequest]] = []
    current = BatchRequest()

    def close_current() -> None:
        nonlocal current
        if current.entries:
            chains.append([current])
        current = BatchRequest()

    for item in items:
        if item.rejected is not None or not item.entries:
            continue
        if current.room_for(item.size - 1, max_request_bytes):
            for entry in item.entries:
                current.add(entry)
            continue
        close_current()
        if current.room_for(item.size - 1, max_request_bytes):
            for entry in item.entries:
                current.add(entry)
            continue
        # One item larger than a whole request: its own chain, entries in order.
        chain = [BatchRequest()]
        for entry in item.entries:
            if not chain[-1].room_for(len(entry.data), max_request_bytes):
                chain.append(BatchRequest())
            chain[-1].add(entry)
        chains.append(chain)
    close_current()
    return chains


# ----- answers -------------------------------------------------------------------------


def describe_entry_error(error: dict[str, Any], label: str) -> str:
    parts = [str(error.get(k)) for k in ("reason", "field", "message") if error.get(k)]
    return f"Customer.io rejected the v2 batch {label} entry: {': '.join(parts) or 'no reason given'}"


def rejected_indexes(response: Response) -> dict[int, dict[str, Any]] | None:
    """`batch_index` → error, from a 207 (empty for a 200); None for a 207 that names no
    entry, where nothing in the request can be counted as delivered with confidence."""
    if response.status_code != 207:
        return {}
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    rejected: dict[int, dict[str, Any]] = {}
    for error in errors:
        if isinstance(error, dict) and isinstance(error.get("batch_index"), int):
            rejected.setdefault(error["batch_index"], error)
    return rejected or None
