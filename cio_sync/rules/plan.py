"""Diff: map one page of Hull users and decide, against their state rows, what to do with each.

Besides the action, a plan says how the person's identity changes in Customer.io:
- an id change (the mapped id differs from the one the person was last sent as): with
  `on_id_change=merge` the old person is merged into the new one, with `delete_old` it is
  deleted by the deletion guard at the end of the run (the new one is identified by the page),
  with `ignore` it is left as it is (the original connector's behaviour);
- `unset_attributes`: attributes Customer.io accepted last time and no longer sent, sent as
  "" so Customer.io removes them (`unset_removed_attributes`);
- `unsuppress`: the person was suppressed when it left the segments and is back;
- `update_only` and `timestamp`: Customer.io's `_update` and `_timestamp` on identify.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cio_sync.rules.changes import Change, attribute_changes
from cio_sync.rules.decisions import (
    DELETE,
    INSERT,
    PAGE_COLUMNS,
    REJECTED_COLUMN,
    SKIP,
    SUPPRESS,
    UNSET_SEGMENTS,
    UPDATE,
    decide,
    mark_duplicate_ids,
)
from cio_sync.rules.mapping import (
    REMOVED,
    MalformedUserError,
    MappedUser,
    _unix_or_none,
    chunk_attributes,
    map_user,
    mapping_fingerprint,
    removed_names,
    source_fields,
    source_keys,
    source_seal,
)
from cio_sync.settings import ConnectorSettings

MERGE, DELETE_OLD = "merge", "delete_old"


@dataclass
class UserPlan:
    hull_id: str
    action: str  # insert | update | delete | suppress | unset_segments | skip
    reason: str
    mapped: MappedUser | None
    external_id: str | None
    target_id: str | None  # Customer.io identifier the calls go to
    created_at: Any = None  # from state: first creation in Customer.io
    target_mapping: str | None = None  # the user_id_mapping target_id is sent under (None: the run's)
    previous_id: str | None = None  # the id the person was last sent as, when it changed
    previous_mapping: str | None = None  # the user_id_mapping previous_id was sent under
    id_change: str | None = None  # merge | delete_old, when previous_id is set
    unset_attributes: list[str] = field(default_factory=list)  # sent as "" (removed)
    unsuppress_id: str | None = None  # the suppressed identifier to unsuppress before the identify
    unsuppress_mapping: str | None = None
    update_only: bool = False  # identify with `_update: true`
    timestamp: int | None = None  # `_timestamp` of the identify calls (Hull's indexed_at)
    # Digests of the attributes Customer.io last accepted (cio_sync/rules/changes.py): {} for an
    # insert (a new person), None when state keeps none (the old values are unknown).
    previous_digests: dict[str, str] | None = None
    # (mapping fingerprint, the Hull fields the mapping read): cio_sync/rules/mapping.py,
    # `source_fields`. Kept in state, sealed with the attributes hash, once Customer.io accepts.
    source: tuple[bytes, bytes] | None = None
    # Decided `unchanged` from the source digest alone: `mapped` is None (never mapped).
    unchanged_source: bool = False
    # Mapped and found unchanged while state's digest is missing or stale (a settings change,
    # rows from before it was kept): the page writes it, so the next run skips the mapping.
    reseal: bool = False

    @property
    def source_seal(self) -> str | None:
        """The state's `source_digest` for this plan, once Customer.io accepted it."""
        if self.source is None or self.mapped is None:
            return None
        return source_seal(*self.source, self.mapped.attributes_hash)

    def changes(self) -> list[Change]:
        """The attributes this plan changes (none for a delete, a suppress or a skip)."""
        if self.mapped is None or self.action not in (INSERT, UPDATE):
            return []
        return attribute_changes(self.previous_digests, self.mapped.attribute_digests, self.unset_attributes)

    @property
    def destructive(self) -> bool:
        """Whether Customer.io loses a person by this plan: a delete, a suppress, or an old
        person merged away or deleted after an id change. What a deletion guard counts."""
        return self.action in (DELETE, SUPPRESS) or self.id_change is not None


def plan_page(
    users: list[dict[str, Any]],
    state: pd.DataFrame,
    settings: ConnectorSettings,
    segment_names: dict[str, str],
    whitelisted_ids: AbstractSet[str],
    id_holders: Callable[[list[str]], Mapping[str, str]] | None = None,
) -> list[UserPlan]:
    """`id_holders(ids)`: which Hull user holds each of these Customer.io ids in state (live
    people only), for the `duplicate_id` rule; asked only for the ids of inserts and updates."""
    plans: list[UserPlan] = []
    # The unchanged fast path: a user whose state row holds the seal of this very source
    # digest and attributes hash maps to exactly those attributes (same fields, same mapping
    # settings) and gets the page row below without being mapped. The decision table still
    # decides; a user it does not call `unchanged` is mapped after all (same result).
    fingerprint = mapping_fingerprint(settings, segment_names, whitelisted_ids)
    keys = source_keys(settings.user_id_mapping, tuple(settings.synchronized_attributes))
    seals: dict[str, tuple[str, str]] = {}
    if "source_digest" in state:
        seals = {
            h: (seal, attributes_hash)
            for h, seal, attributes_hash in zip(state["hull_id"], state["source_digest"], state["attributes_hash"])
            if isinstance(seal, str) and isinstance(attributes_hash, str)
        }
    # (user, mapped or None when the source digest says unchanged, source digest)
    mapped_users: list[tuple[dict[str, Any], MappedUser | None, tuple[bytes, bytes] | None]] = []
    for user in users:
        digest = None
        hull_id = user.get("id") if isinstance(user, dict) and isinstance(user.get("id"), str) else None
        if hull_id:
            fields = source_fields(user, keys)
            digest = None if fields is None else (fingerprint, fields)
            sealed = seals.get(hull_id)
            if fields is not None and sealed is not None and source_seal(fingerprint, fields, sealed[1]) == sealed[0]:
                mapped_users.append((user, None, digest))
                continue
        try:
            mapped_users.append((user, map_user(user, settings, segment_names, whitelisted_ids), digest))
        except MalformedUserError as exc:
            plans.append(UserPlan(hull_id or "?", SKIP, f"malformed: {exc}", None, None, None))
    if not mapped_users:
        return plans

    page = pd.DataFrame(
        [
            (
                (user["id"], True, True, True, True, seals[user["id"]][1])
                # What mapping gave when the seal was written (an accepted insert or update):
                # email, whitelisted segments, a valid id, and this hash.
                if m is None
                else (
                    m.hull_id,
                    m.email is not None,
                    bool(m.whitelisted_segment_ids),
                    m.cio_id is not None,
                    m.id_error is None,
                    m.attributes_hash,
                )
            )
            for user, m, _ in mapped_users
        ],
        columns=PAGE_COLUMNS,
    )
    state_frame = pd.DataFrame(
        {
            "hull_id": state["hull_id"],
            "state_created": state["created_at"].notna(),
            "state_deleted": state["deleted_at"].notna(),
            "state_hash": state["attributes_hash"],
            "state_suppressed": _column(state, "suppressed_at").notna(),
            # After unset_segments the row keeps no whitelisted segment (an empty list); a row
            # written by an insert or update always has at least one.
            "state_unset": _column(state, "segment_ids").map(lambda ids: isinstance(ids, list) and not ids),
            **({REJECTED_COLUMN: state["rejected_hash"]} if "rejected_hash" in state else {}),
        }
    )
    update_only = settings.sync_mode == "update_only"
    decided = decide(page, state_frame, settings.segment_exit, update_only)
    # Users the digest skipped but the decision table did not call unchanged (say the person
    # was deleted since): mapped now, which gives the very page row they were decided on.
    for i, ((user, m, digest), action, reason) in enumerate(zip(mapped_users, decided["action"], decided["reason"])):
        if m is None and (action, reason) != (SKIP, "unchanged"):
            mapped_users[i] = (user, map_user(user, settings, segment_names, whitelisted_ids), digest)
    # Row positions in a plain dict and the few columns the plans read as plain lists: `.loc`
    # or `.iat` per user cost more than the whole vectorised decision.
    state_position = {hull_id: i for i, hull_id in enumerate(state["hull_id"])}
    cio_ids = [m.cio_id if m is not None else None for _, m, _ in mapped_users]
    # Who holds an id is asked only for ids their user does not already hold in state (inserts,
    # id changes): an update under the user's own id is the usual case and needs no query.
    held = {hull_id: cio_id for hull_id, cio_id in zip(state["hull_id"], state["cio_id"])}
    to_check = [
        m.cio_id
        for (_, m, _), a in zip(mapped_users, decided["action"])
        if m is not None and m.cio_id is not None and a in (INSERT, UPDATE) and held.get(m.hull_id) != m.cio_id
    ]
    decided = mark_duplicate_ids(decided, cio_ids, id_holders(to_check) if id_holders and to_check else {})

    columns = {c: state[c].tolist() for c in _PLAN_COLUMNS if c in state}

    def at(column: str, position: int | None) -> Any:
        if position is None or column not in columns:
            return None
        value = columns[column][position]
        if column in _JSON_TEXT and isinstance(value, str):
            value = json.loads(value)  # read from state as JSON text (cio_sync/store/users.py)
        return None if _missing(value) else value

    for (user, mapped, digest), action, reason in zip(mapped_users, decided["action"], decided["reason"]):
        if mapped is None:
            position = state_position.get(user["id"])
            plans.append(
                UserPlan(
                    hull_id=user["id"],
                    action=action,
                    reason=reason,
                    mapped=None,
                    external_id=user.get("external_id"),
                    target_id=at("cio_id", position),
                    timestamp=_unix_or_none(user.get("indexed_at")),
                    update_only=update_only,
                    target_mapping=settings.user_id_mapping,
                    source=digest,
                    unchanged_source=True,
                )
            )
            continue
        position = state_position.get(mapped.hull_id)
        plan = UserPlan(
            hull_id=mapped.hull_id,
            action=action,
            reason=reason,
            mapped=mapped,
            external_id=user.get("external_id"),
            target_id=mapped.cio_id,
            created_at=at("created_at", position) if action == UPDATE else None,
            timestamp=mapped.indexed_at,
            update_only=update_only,
            target_mapping=settings.user_id_mapping,
            source=digest,
        )
        if action == SKIP and reason == "unchanged" and digest is not None:
            plan.reseal = seals.get(mapped.hull_id, ("", ""))[0] != plan.source_seal
        if action in (DELETE, SUPPRESS, UNSET_SEGMENTS):
            # The person that was created, even if the id changed since.
            plan.target_id = at("cio_id", position)
            plan.target_mapping = at("cio_id_mapping", position) or settings.user_id_mapping
        elif action in (INSERT, UPDATE):
            _identity_changes(plan, settings, at, position)
        plans.append(plan)
    return plans


def _identity_changes(
    plan: UserPlan, settings: ConnectorSettings, at: Callable[[str, int | None], Any], position: int | None
) -> None:
    assert plan.mapped is not None
    # Rows from before per-row mappings were kept were sent under this run's mapping (a
    # change of mapping first marks them with the old one: cio_sync/store/identity.py).
    stored_mapping = at("cio_id_mapping", position) or settings.user_id_mapping
    if plan.action == INSERT:
        # A new person (never created, deleted, or suppressed and back): nothing to remove; a
        # suppressed identifier is unsuppressed first, or Customer.io would ignore the identify.
        plan.previous_digests = {}
        if at("suppressed_at", position) is not None:
            plan.unsuppress_id, plan.unsuppress_mapping = at("cio_id", position), stored_mapping
        return
    digests = at("attribute_digests", position)
    plan.previous_digests = digests if isinstance(digests, dict) else None
    # UPDATE: the person is live in Customer.io under the id stored in state.
    if settings.unset_removed_attributes:
        plan.unset_attributes = removed_names(at("attribute_names", position), plan.mapped.attributes)
    stored_id = at("cio_id", position)
    if stored_id is not None and stored_id != plan.mapped.cio_id:
        plan.previous_id, plan.previous_mapping = stored_id, stored_mapping
        if settings.on_id_change != "ignore":
            plan.id_change = settings.on_id_change
        if plan.id_change == DELETE_OLD:
            # The person moves to a new id nobody holds yet: `_update` would create nobody.
            plan.update_only = False


def identify_attributes(plan: UserPlan, max_per_call: int) -> list[dict[str, Any]]:
    """The attribute chunks of a plan's identify calls (reserved `_` keys not included):
    the mapped attributes plus "" for each removed one; `hull_segments` empty alone for
    unset_segments."""
    if plan.action == UNSET_SEGMENTS:
        return [{"hull_segments": []}]
    assert plan.mapped is not None
    attributes = dict(plan.mapped.attributes)
    for name in plan.unset_attributes:
        attributes[name] = REMOVED
    return chunk_attributes(attributes, max_per_call)


def _column(state: pd.DataFrame, name: str) -> pd.Series:
    return state[name] if name in state else pd.Series([None] * len(state), index=state.index, dtype=object)


# State columns that may hold JSON text, decoded when read (only an update reads them).
_JSON_TEXT = frozenset({"attribute_names", "attribute_digests"})
_PLAN_COLUMNS = ("cio_id", "created_at", "cio_id_mapping", "attribute_names", "suppressed_at", "attribute_digests")


def _missing(value: Any) -> bool:
    """None, or what pandas puts in its place (NaN, NaT)."""
    return value is None or value is pd.NaT or (isinstance(value, float) and value != value)


__all__ = [
    "DELETE",
    "DELETE_OLD",
    "INSERT",
    "MERGE",
    "SKIP",
    "SUPPRESS",
    "UNSET_SEGMENTS",
    "UPDATE",
    "UserPlan",
    "identify_attributes",
    "plan_page",
]
