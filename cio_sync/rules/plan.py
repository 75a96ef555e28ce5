"""Diff: map one page of Hull users and decide, against their state rows, what to do with each."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cio_sync.rules.decisions import DELETE, INSERT, PAGE_COLUMNS, SKIP, UPDATE, decide, mark_duplicate_ids
from cio_sync.rules.mapping import MalformedUserError, MappedUser, map_user
from cio_sync.settings import ConnectorSettings


@dataclass
class UserPlan:
    hull_id: str
    action: str  # insert | update | delete | skip
    reason: str
    mapped: MappedUser | None
    external_id: str | None
    target_id: str | None  # Customer.io identifier the calls go to
    created_at: Any = None  # from state: first creation in Customer.io


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
    mapped_users: list[tuple[dict[str, Any], MappedUser]] = []
    for user in users:
        try:
            mapped_users.append((user, map_user(user, settings, segment_names, whitelisted_ids)))
        except MalformedUserError as exc:
            hull_id = user.get("id") if isinstance(user, dict) and isinstance(user.get("id"), str) else None
            plans.append(UserPlan(hull_id or "?", SKIP, f"malformed: {exc}", None, None, None))
    if not mapped_users:
        return plans

    page = pd.DataFrame(
        [
            (m.hull_id, m.email is not None, bool(m.whitelisted_segment_ids), m.cio_id is not None,
             m.id_error is None, m.attributes_hash)
            for _, m in mapped_users
        ],
        columns=PAGE_COLUMNS,
    )
    state_frame = pd.DataFrame(
        {
            "hull_id": state["hull_id"],
            "state_created": state["created_at"].notna(),
            "state_deleted": state["deleted_at"].notna(),
            "state_hash": state["attributes_hash"],
        }
    )
    decided = decide(page, state_frame, settings.enable_user_deletion)
    # Row positions in a plain dict, values read only for the users that need them: `.loc` per
    # user (or converting every row) cost more than the whole vectorised decision.
    state_position = {hull_id: i for i, hull_id in enumerate(state["hull_id"])}
    cio_ids = [m.cio_id for _, m in mapped_users]
    # Who holds an id is asked only for ids their user does not already hold in state (inserts,
    # id changes): an update under the user's own id is the usual case and needs no query.
    held = {hull_id: cio_id for hull_id, cio_id in zip(state["hull_id"], state["cio_id"])}
    to_check = [m.cio_id for (_, m), a in zip(mapped_users, decided["action"])
                if m.cio_id is not None and a in (INSERT, UPDATE) and held.get(m.hull_id) != m.cio_id]
    decided = mark_duplicate_ids(decided, cio_ids, id_holders(to_check) if id_holders and to_check else {})

    for (user, mapped), action, reason in zip(mapped_users, decided["action"], decided["reason"]):
        position = state_position.get(mapped.hull_id)
        known = position is not None
        target = mapped.cio_id
        if action == DELETE:
            # delete the person that was created, even if the id changed
            target = state["cio_id"].iat[position]
        plans.append(
            UserPlan(
                hull_id=mapped.hull_id,
                action=action,
                reason=reason,
                mapped=mapped,
                external_id=user.get("external_id"),
                target_id=target,
                created_at=state["created_at"].iat[position] if known and action == UPDATE else None,
            )
        )
    return plans


__all__ = ["DELETE", "INSERT", "SKIP", "UPDATE", "UserPlan", "plan_page"]
