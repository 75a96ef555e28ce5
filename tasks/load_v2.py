"""Load through Customer.io's v2 batch API: one page's actions packed into `POST /api/v2/batch`.

The v1 pusher (tasks/load.py) makes one HTTP call per identify chunk, delete and event. Here
the same actions become batch entries, packed by bytes: each entry at most 32 KB and each
request body at most 500 KB, measured on the exact bytes that are sent (entries are
serialised once, and the request body is those bytes joined). Both limits are read as
decimal kilobytes, the stricter reading of Customer.io's "500kb"/"32kb".

Ordering: one user's entries stay in order. They share one request whenever they fit; a user
whose entries need more than one request gets a chain of requests sent one after the other.
Different requests run in parallel (bounded by `push_concurrency`) and share the client's
rate limiter.

Failures map back to users (or events): a 207 names invalid entries by `batch_index`, and only
the users/events owning those entries fail (permanent, with Customer.io's reason); a whole
request that fails (400, or transient after retries) fails every user in it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from cio_sync.mapping import chunk_attributes

try:  # installed with Prefect; optional here
    import orjson
except ImportError:  # pragma: no cover
    orjson = None
from connectors.customerio import CustomerIoClient
from connectors.http import AuthError, PermanentError, TransientError
from tasks.diff import DELETE, INSERT, UPDATE, UserPlan
from tasks.load import CONSECUTIVE_TRANSIENT_LIMIT, CustomerIoUnavailable, UserOutcome

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


def identify_entries(identifiers: dict[str, str], attributes: dict[str, Any], max_attributes: int,
                     max_entry_bytes: int = MAX_ENTRY_BYTES) -> list[dict[str, Any]]:
    """Identify entries of at most `max_attributes` attributes each (id and email first, as
    in v1); a chunk whose entry would pass `max_entry_bytes` is split further by halves, so
    only a single attribute too big for any entry is left oversized."""
    return [entry for entry, _ in _identify_encoded(identifiers, attributes, max_attributes, max_entry_bytes)]


def _identify_encoded(identifiers: dict[str, str], attributes: dict[str, Any], max_attributes: int,
                      max_entry_bytes: int) -> list[tuple[dict[str, Any], bytes]]:
    """identify_entries with each entry's bytes: every entry is serialised exactly once."""
    entries: list[tuple[dict[str, Any], bytes]] = []

    def add(chunk: list[tuple[str, Any]]) -> None:
        entry = {"type": "person", "identifiers": identifiers, "action": "identify", "attributes": dict(chunk)}
        data = encode_entry(entry)
        if len(chunk) > 1 and len(data) > max_entry_bytes:
            middle = len(chunk) // 2
            add(chunk[:middle])
            add(chunk[middle:])
        else:
            entries.append((entry, data))

    for chunk in chunk_attributes(attributes, max_attributes):
        add(list(chunk.items()))
    return entries


def user_entries(plan: UserPlan, owner: int, user_id_mapping: str, max_attributes: int,
                 max_entry_bytes: int = MAX_ENTRY_BYTES) -> ItemEntries:
    identifiers = v2_identifiers(plan.target_id, user_id_mapping)
    if plan.action == DELETE:
        entry = {"type": "person", "identifiers": identifiers, "action": "delete"}
        return _encode_item([(entry, encode_entry(entry))], ["delete"], owner, max_entry_bytes)
    encoded = _identify_encoded(identifiers, plan.mapped.attributes, max_attributes, max_entry_bytes)
    labels = [f"identify {i + 1}/{len(encoded)}" for i in range(len(encoded))]
    return _encode_item(encoded, labels, owner, max_entry_bytes)


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


def _encode_item(encoded: list[tuple[dict[str, Any], bytes]], labels: list[str], owner: int,
                 max_entry_bytes: int) -> ItemEntries:
    item = ItemEntries()
    for (_entry, data), label in zip(encoded, labels):
        if len(data) > max_entry_bytes:
            # Nothing of this item is sent: a partial user would look synced but lack attributes.
            return ItemEntries(rejected=(
                f"v2 batch {label} entry is {len(data):,} bytes, over Customer.io's limit of "
                f"{max_entry_bytes:,} bytes per entry; not sent"))
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


# ----- sending -------------------------------------------------------------------------


@dataclass
class ItemResult:
    """What Customer.io said about one item's entries."""

    delivered: Counter = field(default_factory=Counter)  # label kind ("identify", ...) → entries accepted
    error_kind: str | None = None  # permanent | transient | not_attempted
    error: str | None = None

    def fail(self, kind: str, message: str) -> None:
        # The first failure explains the item; a later transient never hides a permanent one.
        if self.error_kind is None or (self.error_kind != "permanent" and kind == "permanent"):
            self.error_kind, self.error = kind, message


def describe_entry_error(error: dict[str, Any], label: str) -> str:
    parts = [str(error.get(k)) for k in ("reason", "field", "message") if error.get(k)]
    return f"Customer.io rejected the v2 batch {label} entry: {': '.join(parts) or 'no reason given'}"


def send_chains(client: CustomerIoClient, chains: list[list[BatchRequest]], results: list[ItemResult],
                concurrency: int, calls: Counter | None = None) -> None:
    """Sends every chain; fills `results` (indexed by entry owner). Raises AuthError at once
    on 401/403; raises CustomerIoUnavailable (with nothing else) when requests keep failing
    transiently, after marking the unsent items `not_attempted`."""
    lock = threading.Lock()
    state = {"consecutive_transient": 0, "stopped": False, "fatal": None}

    def mark(request: BatchRequest, kind: str, message: str) -> None:
        for entry in request.entries:
            results[entry.owner].fail(kind, message)

    def run(chain: list[BatchRequest]) -> None:
        for position, request in enumerate(chain):
            if state["stopped"] or state["fatal"] is not None:
                for rest in chain[position:]:
                    mark(rest, "not_attempted", "not attempted: the page was stopped")
                return
            try:
                response = client.request_batch(request.body())
            except AuthError as exc:
                state["fatal"] = exc
                mark(request, "not_attempted", str(exc))
                continue
            except (PermanentError, TransientError) as exc:
                kind = "permanent" if isinstance(exc, PermanentError) else "transient"
                mark(request, kind, str(exc))
                with lock:
                    if calls is not None:
                        calls["batch"] += 1
                    if kind == "transient":
                        state["consecutive_transient"] += 1
                        state["stopped"] = state["consecutive_transient"] >= CONSECUTIVE_TRANSIENT_LIMIT
                # The rest of this chain belongs to the same item: sending it out of order would
                # leave that user half updated.
                for rest in chain[position + 1 :]:
                    mark(rest, kind, f"not sent: an earlier batch for the same user failed ({exc})")
                return
            rejected = _rejected_indexes(response)
            if rejected is None:
                rejected = dict.fromkeys(range(len(request.entries)), {"reason": "207 naming no entry"})
            for index, entry in enumerate(request.entries):
                if index in rejected:
                    results[entry.owner].fail("permanent", describe_entry_error(rejected[index], entry.label))
                else:
                    results[entry.owner].delivered[entry.label.split(" ")[0]] += 1
            with lock:
                if calls is not None:
                    calls["batch"] += 1
                state["consecutive_transient"] = 0

    if concurrency <= 1 or len(chains) <= 1:
        for chain in chains:
            run(chain)
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cio-batch") as pool:
            list(pool.map(run, chains))

    if state["fatal"] is not None:
        raise state["fatal"]
    if state["stopped"]:
        raise CustomerIoUnavailable(results)


def _rejected_indexes(response) -> dict[int, dict[str, Any]] | None:
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


# ----- users ---------------------------------------------------------------------------


def push_page_v2(
    client: CustomerIoClient,
    plans: list[UserPlan],
    *,
    user_id_mapping: str,
    max_attributes_per_call: int,
    concurrency: int,
    calls: Counter | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
) -> list[UserOutcome]:
    """The v2 counterpart of `tasks.load.push_page`: one UserOutcome per plan with an action,
    same error kinds, same exceptions (AuthError; CustomerIoUnavailable carrying outcomes).
    `identify_calls`/`delete_calls` count accepted entries; `calls["batch"]` counts requests."""
    work = [p for p in plans if p.action in (INSERT, UPDATE, DELETE)]
    items = [user_entries(plan, i, user_id_mapping, max_attributes_per_call, max_entry_bytes)
             for i, plan in enumerate(work)]
    results = [ItemResult() for _ in work]
    for item, result in zip(items, results):
        if item.rejected is not None:
            result.fail("permanent", item.rejected)
    stopped = None
    try:
        send_chains(client, pack(items, max_request_bytes), results, concurrency, calls)
    except CustomerIoUnavailable as exc:
        stopped = exc
    outcomes = [_user_outcome(plan, result) for plan, result in zip(work, results)]
    if stopped is not None:
        raise CustomerIoUnavailable(outcomes)
    return outcomes


def _user_outcome(plan: UserPlan, result: ItemResult) -> UserOutcome:
    outcome = UserOutcome(
        plan,
        identify_calls=result.delivered["identify"],
        delete_calls=result.delivered["delete"],
        created=result.delivered["identify"] > 0,
    )
    if result.error_kind is None:
        outcome.ok = True
    else:
        outcome.error_kind, outcome.error = result.error_kind, result.error
    return outcome


# ----- events --------------------------------------------------------------------------


def push_events_v2(
    client: CustomerIoClient,
    events: list[tuple[str, dict[str, Any]]],
    *,
    user_id_mapping: str,
    concurrency: int,
    calls: Counter | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
) -> list[tuple[str, str | None]]:
    """Person events `(Customer.io identifier, v1 event body)` as v2 entries. Returns one
    (status, error) per event like tasks.events.send_event: sent | failed | retry.
    One user's events are in input order within a request, and requests holding events of
    the same user are never sent concurrently (they are chained)."""
    items = []
    for index, (identifier, body) in enumerate(events):
        entry = event_entry(v2_identifiers(identifier, user_id_mapping), body)
        items.append(_encode_item([(entry, encode_entry(entry))], [entry["action"]], index, max_entry_bytes))
    results = [ItemResult() for _ in events]
    for item, result in zip(items, results):
        if item.rejected is not None:
            result.fail("permanent", item.rejected)
    chains = _chain_by_identifier(pack(items, max_request_bytes), [identifier for identifier, _ in events])
    try:
        send_chains(client, chains, results, concurrency, calls)
    except CustomerIoUnavailable:
        pass  # unsent events are marked not_attempted → retried through a failed batch
    statuses = {None: "sent", "permanent": "failed", "transient": "retry", "not_attempted": "retry"}
    return [(statuses[r.error_kind], r.error) for r in results]


def _chain_by_identifier(chains: list[list[BatchRequest]], identifiers: list[str]) -> list[list[BatchRequest]]:
    """Merges chains that share a user so that user's events go out in order (union-find on
    the identifiers each request carries)."""
    parent = list(range(len(chains)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_chain: dict[str, int] = {}
    for index, chain in enumerate(chains):
        for request in chain:
            for entry in request.entries:
                other = first_chain.setdefault(identifiers[entry.owner], index)
                parent[find(index)] = find(other)
    merged: dict[int, list[BatchRequest]] = {}
    for index, chain in enumerate(chains):
        merged.setdefault(find(index), []).extend(chain)
    return list(merged.values())


__all__ = ["push_page_v2", "push_events_v2", "pack", "user_entries", "identify_entries", "v2_identifiers",
           "MAX_REQUEST_BYTES", "MAX_ENTRY_BYTES"]
