"""Load through Customer.io's v2 batch API: one page's actions packed into `POST /api/v2/batch`.

The v1 pusher (`push.py`) makes one HTTP call per identify chunk, delete and event. Here the
same actions become batch entries (`connectors/customerio_batch.py` encodes and packs them).

Ordering: one user's entries stay in order. They share one request whenever they fit; a user
whose entries need more than one request gets a chain of requests sent one after the other.
Different requests run in parallel (bounded by `push_concurrency`) and share the client's
rate limiter.

Failures map back to users (or events): a 207 names invalid entries by `batch_index`, and only
the users/events owning those entries fail (permanent, with Customer.io's reason). A 400 for a
whole request names no entry, so the request is bisected: its items are split in two halves
(one item's entries always stay together, in order), each half is resent, and so on until the
items Customer.io rejects are alone in a request; only they fail (permanent, with Customer.io's
message), every other item is delivered. A request that fails transiently (after the client's
retries) fails the items in it as transient; they are kept as a failed batch.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cio_sync.pipeline.breaker import Breaker
from cio_sync.pipeline.push import PUSHED_ACTIONS, CustomerIoUnavailable, UserOutcome
from cio_sync.pipeline.senders import run_groups
from cio_sync.rules.plan import DELETE, MERGE, SUPPRESS, UNSET_SEGMENTS, UserPlan, identify_attributes
from connectors.customerio import CustomerIoClient
from connectors.customerio_batch import (
    MAX_ENTRY_BYTES,
    MAX_REQUEST_BYTES,
    BatchRequest,
    ItemEntries,
    describe_entry_error,
    encode_entry,
    encode_item,
    event_entry,
    identify_encoded,
    merge_entry,
    pack,
    person_entry,
    rejected_indexes,
    v2_identifiers,
)
from connectors.http import AuthError, PermanentError, TransientError


def user_entries(
    plan: UserPlan, owner: int, user_id_mapping: str, max_attributes: int, max_entry_bytes: int = MAX_ENTRY_BYTES
) -> ItemEntries:
    """One user's entries, in the order v1 sends its calls (cio_sync/pipeline/push.py): a
    returning person's `unsuppress`; after an id change with `merge` an empty identify of the
    new id and the `merge` (with `delete_old` the deletion guard deletes the old person later);
    then the identify chunks."""
    assert plan.target_id is not None, "only plans with an action are pushed"
    target = v2_identifiers(plan.target_id, plan.target_mapping or user_id_mapping)
    if plan.action in (DELETE, SUPPRESS):
        entry = person_entry(target, plan.action)
        return encode_item([(entry, encode_entry(entry))], [plan.action], owner, max_entry_bytes)
    encoded: list[tuple[dict[str, Any], bytes]] = []
    labels: list[str] = []

    def add(entry: dict[str, Any], label: str) -> None:
        encoded.append((entry, encode_entry(entry)))
        labels.append(label)

    if plan.unsuppress_id is not None:
        add(
            person_entry(v2_identifiers(plan.unsuppress_id, plan.unsuppress_mapping or user_id_mapping), "unsuppress"),
            "unsuppress",
        )
    if plan.previous_id is not None and plan.id_change == MERGE:
        previous = v2_identifiers(plan.previous_id, plan.previous_mapping or user_id_mapping)
        add(
            {"type": "person", "identifiers": target, "action": "identify", "attributes": {}},
            "identify (the merge's primary)",
        )
        add(merge_entry(target, previous), "merge")
    chunks = identify_encoded(
        target,
        identify_attributes(plan, max_attributes),
        max_entry_bytes,
        timestamp=plan.timestamp,
        update_only=plan.update_only or plan.action == UNSET_SEGMENTS,
    )
    encoded.extend(chunks)
    labels.extend(f"identify {i + 1}/{len(chunks)}" for i in range(len(chunks)))
    return encode_item(encoded, labels, owner, max_entry_bytes)


# ----- sending -------------------------------------------------------------------------


@dataclass
class ItemResult:
    """What Customer.io said about one item's entries."""

    delivered: Counter = field(default_factory=Counter)  # label kind ("identify", ...) → entries accepted
    error_kind: str | None = None  # permanent | transient | not_attempted
    error: str | None = None
    log: list[dict] = field(default_factory=list)  # one {"call", "status", "error"} per entry sent

    def fail(self, kind: str, message: str) -> None:
        # The first failure explains the item; a later transient never hides a permanent one.
        if self.error_kind is None or (self.error_kind != "permanent" and kind == "permanent"):
            self.error_kind, self.error = kind, message


def send_chains(
    client: CustomerIoClient,
    chains: list[list[BatchRequest]],
    results: list[ItemResult],
    concurrency: int,
    calls: Counter | None = None,
    breaker: Breaker | None = None,
) -> None:
    """Sends every chain; fills `results` (indexed by entry owner). Raises AuthError at once
    on 401/403; raises CustomerIoUnavailable (with nothing else) when requests keep failing
    transiently (the phase's `breaker`, or one for this page), after marking the unsent items
    `not_attempted`."""
    lock = threading.Lock()
    breaker = breaker or Breaker()

    def mark(request: BatchRequest, kind: str, message: str, status: int | None = None) -> None:
        for entry in request.entries:
            results[entry.owner].fail(kind, message)
            if kind != "not_attempted" or status is not None:
                results[entry.owner].log.append({"call": f"batch: {entry.label}", "status": status, "error": message})

    def count_request() -> None:
        if calls is not None:
            with lock:
                calls["batch"] += 1

    def send(request: BatchRequest, failed: set[int]) -> None:
        """One request; on a 400, its halves, recursively. Owners that fail join `failed`."""
        try:
            response = client.request_batch(request.body())
        except AuthError as exc:
            breaker.trip(exc)
            mark(request, "not_attempted", str(exc), exc.status)
            failed.update(owners_of(request))
            return
        except TransientError as exc:
            mark(request, "transient", str(exc), exc.status)
            failed.update(owners_of(request))
            count_request()
            breaker.record(True)
            return
        except PermanentError as exc:
            count_request()
            breaker.record(False)
            owners = owners_of(request)
            if len(owners) == 1:
                mark(
                    request,
                    "permanent",
                    f"Customer.io rejected a v2 batch request holding only this item: {exc}",
                    exc.status,
                )
                failed.update(owners)
                return
            for half in (owners[: len(owners) // 2], owners[len(owners) // 2 :]):
                piece = subset(request, set(half))
                if breaker.stopped():
                    mark(piece, "not_attempted", "not attempted: the page was stopped")
                    failed.update(half)
                else:
                    send(piece, failed)
            return
        rejected = rejected_indexes(response)
        if rejected is None:
            rejected = dict.fromkeys(range(len(request.entries)), {"reason": "207 naming no entry"})
        for index, entry in enumerate(request.entries):
            result = results[entry.owner]
            if index in rejected:
                message = describe_entry_error(rejected[index], entry.label)
                result.fail("permanent", message)
                result.log.append({"call": f"batch: {entry.label}", "status": 207, "error": message})
            else:
                result.delivered[entry.label.split(" ")[0]] += 1
                result.log.append({"call": f"batch: {entry.label}", "status": 200, "error": None})
        count_request()
        breaker.record(False)

    def run(chain: list[BatchRequest]) -> None:
        # Owners whose request failed: their later entries are not sent (out of order, they
        # would leave that user half updated); the other owners of the chain go on.
        failed: set[int] = set()
        for position, request in enumerate(chain):
            if breaker.stopped():
                for rest in chain[position:]:
                    mark(rest, "not_attempted", "not attempted: the page was stopped")
                return
            if failed:
                request = subset(request, set(owners_of(request)) - failed)
            if request.entries:
                send(request, failed)

    run_groups(chains, run, concurrency, "cio-batch")
    breaker.raise_fatal()
    if breaker.open:
        raise CustomerIoUnavailable(results)


def owners_of(request: BatchRequest) -> list[int]:
    """The items a request carries, in order of their first entry."""
    return list(dict.fromkeys(entry.owner for entry in request.entries))


def subset(request: BatchRequest, owners: set[int]) -> BatchRequest:
    """The entries of `owners` only, in their order (smaller than `request`, so within limits)."""
    piece = BatchRequest()
    for entry in request.entries:
        if entry.owner in owners:
            piece.add(entry)
    return piece


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
    breaker: Breaker | None = None,
) -> list[UserOutcome]:
    """The v2 counterpart of `cio_sync.pipeline.push.push_page`: one UserOutcome per plan with an action,
    same error kinds, same exceptions (AuthError; CustomerIoUnavailable carrying outcomes).
    `identify_calls`/`delete_calls` count accepted entries; `calls["batch"]` counts requests."""
    work = [p for p in plans if p.action in PUSHED_ACTIONS]
    items = [
        user_entries(plan, i, user_id_mapping, max_attributes_per_call, max_entry_bytes) for i, plan in enumerate(work)
    ]
    results = [ItemResult() for _ in work]
    for item, result in zip(items, results):
        if item.rejected is not None:
            result.fail("permanent", item.rejected)
            result.log.append({"call": "batch: (not sent)", "status": None, "error": item.rejected})
    stopped = None
    try:
        send_chains(client, pack(items, max_request_bytes), results, concurrency, calls, breaker)
    except CustomerIoUnavailable as exc:
        stopped = exc
    outcomes = [_user_outcome(plan, result) for plan, result in zip(work, results)]
    if stopped is not None:
        raise CustomerIoUnavailable(outcomes)
    return outcomes


def _user_outcome(plan: UserPlan, result: ItemResult) -> UserOutcome:
    delivered = result.delivered
    outcome = UserOutcome(
        plan,
        identify_calls=delivered["identify"],
        delete_calls=delivered["delete"],
        created=delivered["identify"] > 0,
        calls=Counter({k: delivered[k] for k in ("merge", "suppress", "unsuppress") if delivered[k]}),
        moved=bool(delivered["merge"]),
        unsuppressed=bool(delivered["unsuppress"]),
        log=result.log,
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
    breaker: Breaker | None = None,
) -> list[tuple[str, str | None]]:
    """Person events `(Customer.io identifier, v1 event body)` as v2 entries. Returns one
    (status, error) per event like cio_sync.pipeline.events_page.send_event: sent | failed | retry.
    One user's events are in input order within a request, and requests holding events of
    the same user are never sent concurrently (they are chained)."""
    items = []
    for index, (identifier, body) in enumerate(events):
        entry = event_entry(v2_identifiers(identifier, user_id_mapping), body)
        items.append(encode_item([(entry, encode_entry(entry))], [entry["action"]], index, max_entry_bytes))
    results = [ItemResult() for _ in events]
    for item, result in zip(items, results):
        if item.rejected is not None:
            result.fail("permanent", item.rejected)
    chains = _chain_by_identifier(pack(items, max_request_bytes), [identifier for identifier, _ in events])
    try:
        send_chains(client, chains, results, concurrency, calls, breaker)
    except CustomerIoUnavailable:
        pass  # unsent events are marked not_attempted → retried through a failed batch; the caller reads the breaker
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


__all__ = ["push_events_v2", "push_page_v2", "user_entries"]
