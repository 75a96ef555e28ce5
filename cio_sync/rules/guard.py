"""The deletion guard's rules (pure): when a run may not delete at all, how many people a run
may delete without approval, and what identifies a plan that awaits approval.

The guard itself (cio_sync/pipeline/deletions.py) applies them at the end of a run, once every
decision of the run is known; the flow asks for approval (cio_sync/pipeline/approval.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

from cio_sync.settings import ConnectorSettings

# Without `max_deletions_per_run`: the larger of these two.
MIN_DELETIONS_LIMIT = 100
DELETIONS_FRACTION = 0.05  # of the people state tracks as live in Customer.io
SEGMENTS_LISTED = 50  # a failure message lists at most this many of Hull's segments
APPROVE_COMMAND = "cio-sync sync-users --approve-deletions"


def deletion_limit(configured: int | None, live_people: int) -> int:
    """How many people one run may delete without approval."""
    if configured is not None:
        return configured
    return max(MIN_DELETIONS_LIMIT, int(live_people * DELETIONS_FRACTION))


def segments_problem(
    settings: ConnectorSettings, unknown: Iterable[str], hull_segments: Mapping[str, str]
) -> str | None:
    """Why a run whose segment exit acts on people (delete, suppress, unset_segments) must not
    start: every user it reads would count as "not in segments" and be acted on.
    `hull_segments`: id → name of the segments Hull has."""
    action = settings.segment_exit
    if action == "keep":
        return None
    acting = "enable_user_deletion is on" if action == "delete" else f"on_segment_exit is {action!r}"
    if not settings.synchronized_segments:
        return (
            f"{acting} but synchronized_segments is empty, so every user would leave the segments "
            f"({action} in Customer.io): nothing was sent. Set SYNCHRONIZED_SEGMENTS (or the deployment "
            "parameter), or set on_segment_exit to keep."
        )
    missing = list(unknown)
    if not missing:
        return None
    listed = sorted(hull_segments.items(), key=lambda item: item[1].lower())
    names = ", ".join(f"{name!r} ({segment_id})" for segment_id, name in listed[:SEGMENTS_LISTED])
    more = f" and {len(listed) - SEGMENTS_LISTED} more" if len(listed) > SEGMENTS_LISTED else ""
    return (
        f"synchronized segment{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
        f"{'do' if len(missing) > 1 else 'does'} not exist in Hull (renamed, misspelt, or missing from "
        f"this worker's settings?) and {acting}: nothing was sent, so that their users "
        f"are not acted on. Segments in Hull: {names or 'none'}{more}."
    )


def plan_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """Identifies a set of (Hull id, Customer.io id): the same people give the same digest."""
    text = "\n".join(f"{hull_id}\t{cio_id}" for hull_id, cio_id in sorted(pairs))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


REMOVAL_WORDS = {
    "delete": "deleted",
    "suppress": "deleted and suppressed",
    "delete_old": "deleted under an old id after an id change",
}


def removal_words(actions: Iterable[str | None]) -> tuple[str, str]:
    """("deleted", "") for a plan of deletes only; else ("removed", " (150 deleted, 50 deleted and
    suppressed)"): what the people of a plan would undergo, for its messages."""
    counts = Counter(action or "delete" for action in actions)
    if set(counts) <= {"delete"}:
        return "deleted", ""
    parts = ", ".join(f"{n} {REMOVAL_WORDS.get(action, action)}" for action, n in sorted(counts.items()))
    return "removed", f" ({parts})"


def over_limit_message(
    count: int, limit: int, plan_id: int, from_deployment: bool, actions: Iterable[str | None] = ()
) -> str:
    verb, breakdown = removal_words(actions)
    how = (
        "approve it in the Prefect UI (the paused run's Resume form), or start a run with the parameter "
        "approve_deletions=true"
        if from_deployment
        else f"run `{APPROVE_COMMAND}`"
    )
    return (
        f"{count} people would be {verb} from Customer.io{breakdown}, more than max_deletions_per_run "
        f"({limit}): nobody was {verb}. The list is deletion plan #{plan_id} (the `deletion-plan` artifact); "
        f"to go ahead with exactly those people, {how}."
    )
