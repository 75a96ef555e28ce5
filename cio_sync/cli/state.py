"""State commands: `cio-sync resync` and `cio-sync cursor show|set`.

Neither calls Customer.io nor starts a Prefect server: they change what the next sync run
does. `resync --segment` asks Hull for the segment list (names → ids), nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime

from cio_sync.redact import scrub

PREVIEW = 20  # ids listed when a resync needs approval


def _engine():
    from cio_sync.settings import StateSettings
    from cio_sync.store import db

    return db.get_engine(StateSettings().state_database_url)


def _confirm(question: str, yes: bool, ask: Callable[[str], str] | None = None) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} not confirmed: run it again with --yes (no terminal to ask)", file=sys.stderr)
        return False
    return (ask or input)(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def resolve_segment_ids(names: list[str]) -> tuple[set[str], list[str]]:
    """Segment names or ids → ids, through Hull's segment list (state keeps ids only)."""
    from cio_sync.rules.mapping import resolve_segments
    from cio_sync.settings import HullCredentials, RetrySettings, require
    from connectors.hull import HullClient

    credentials = HullCredentials()
    require(credentials.missing())
    hull = HullClient.from_settings(credentials, retry=RetrySettings().policy())
    try:
        return resolve_segments(names, hull.segments())
    finally:
        hull.close()


def cmd_resync(args) -> int:
    from cio_sync.settings import OperationsSettings
    from cio_sync.store.resync import count_resync_requests, known_hull_ids, request_resync, state_hull_ids

    engine = _engine()
    if args.all:
        what, ids = "every person in the state database", list(state_hull_ids(engine))
    elif args.segment:
        segment_ids, unknown = resolve_segment_ids(args.segment)
        if unknown:
            print(f"error: no Hull segment named {', '.join(map(repr, unknown))}", file=sys.stderr)
            return 2
        what = f"the people in segment {', '.join(args.segment)} at their last sync"
        ids = list(state_hull_ids(engine, segment_ids))
    else:
        what, ids = "the Hull users given", list(dict.fromkeys(args.user))
        unknown_here = len(ids) - len(known_hull_ids(engine, ids))
        if unknown_here:
            print(f"{unknown_here} of them are not in the state database yet: the next run reads them from Hull")
    if not ids:
        print(f"nobody to resync: no {what}")
        return 0
    limit = OperationsSettings().max_resync_without_approval
    print(f"resync: {len(ids)} people ({what}) will be sent to Customer.io again by the next sync-users run")
    if len(ids) > limit and not args.yes:
        shown = ", ".join(ids[:PREVIEW]) + (f" ... and {len(ids) - PREVIEW} more" if len(ids) > PREVIEW else "")
        print(f"  {shown}")
        print(
            f"that is more than MAX_RESYNC_WITHOUT_APPROVAL ({limit}): nothing was recorded; "
            "run it again with --yes to approve",
            file=sys.stderr,
        )
        return 3
    request_resync(engine, ids, scrub(" ".join(["resync", *sys.argv[2:]]))[:255])
    print(f"recorded; {count_resync_requests(engine)} people now wait for the next run (no Customer.io call made now)")
    return 0


def cmd_cursor_show(args) -> int:
    from cio_sync.pipeline.watermarks import EVENTS_START
    from cio_sync.store.cursors import list_cursors, read_meta

    engine = _engine()
    cursors = sorted(list_cursors(engine), key=lambda c: c.name)
    if not cursors:
        print("no stream cursor yet (the first sync-users run reads everything)")
    for cursor in cursors:
        print(
            f"{cursor.name:<28} {cursor.position or '-':<28} updated {cursor.updated_at.isoformat(timespec='seconds')}"
        )
    events_start = read_meta(engine, EVENTS_START)
    if events_start:
        print(f"{EVENTS_START:<28} {events_start:<28} (the schedule never sends an older event)")
    return 0


def parse_iso(value: str) -> datetime:
    """An ISO 8601 time with a time zone (`2026-11-20T08:00:00Z`, `...+01:00`)."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("it has no time zone: add Z for UTC, or an offset such as +01:00")
    return moment


def cmd_cursor_set(args) -> int:
    from cio_sync.rules.watermarks import format_position
    from cio_sync.store.cursors import list_cursors, set_cursor_position
    from cio_sync.store.lease import list_leases

    engine = _engine()
    try:
        position = format_position(parse_iso(args.position))
    except ValueError as exc:
        print(f"error: {args.position!r} is not an ISO 8601 time ({exc})", file=sys.stderr)
        return 2
    stored = {c.name: c for c in list_cursors(engine)}
    if args.name not in stored and args.name not in ("users", "events"):
        known = ", ".join(sorted(set(stored) | {"users", "events"}))
        print(
            f"error: no stream cursor named {args.name!r} (known: {known}; see `cio-sync cursor show`)", file=sys.stderr
        )
        return 2
    held = [row.name for row in list_leases(engine) if not row.expired() and not row.process_gone()]
    if held:
        print(
            f"error: a run holds {', '.join(held)}; its next page would overwrite the cursor. "
            "Wait for it to end (`cio-sync lease show`).",
            file=sys.stderr,
        )
        return 1
    old = stored[args.name].position if args.name in stored else None
    question = f"move cursor {args.name!r} from {old or '(none)'} to {position}?"
    if not _confirm(question, args.yes):
        print("cursor left as it was")
        return 1
    set_cursor_position(engine, args.name, position)
    print(f"cursor {args.name!r}: {old or '(none)'} → {position}; the next run resumes there")
    return 0
