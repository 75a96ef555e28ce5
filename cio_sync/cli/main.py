"""`cio-sync`: run the flows and the webhook intake from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from cio_sync.redact import scrub, scrub_obj

# Prefect's own limit is 20 s, which a busy 2-core machine can miss on a cold start.
EPHEMERAL_SERVER_STARTUP_SECONDS = "180"
_FLOW_COMMANDS = {"sync-users", "drain-webhooks", "failed", "demo", "backfill-events"}


def _quiet_prefect_defaults() -> None:
    # Without PREFECT_API_URL Prefect starts a throwaway server per command; keep its
    # start-up and shutdown chatter (and its telemetry) out of a successful command's output.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_SERVER_STARTUP_SECONDS)


def _say_if_starting_prefect(command: str) -> None:
    """A command that runs a flow without a Prefect server starts a temporary one first:
    say so, since it is most of a short command's time."""
    if command in _FLOW_COMMANDS and not os.environ.get("PREFECT_API_URL"):
        print(
            "No PREFECT_API_URL set: starting a temporary Prefect server for this command "
            "(10-30 s on a small machine)...",
            file=sys.stderr,
            flush=True,
        )


def _require_credentials(hull: bool = True, customerio: bool = True) -> None:
    """Missing settings are reported before Prefect starts, in one line, not as a flow traceback."""
    from cio_sync.settings import CustomerIoCredentials, HullCredentials, require

    require(HullCredentials().missing() if hull else [], CustomerIoCredentials().missing() if customerio else [])


def cmd_sync_users(args) -> int:
    _require_credentials()
    from cio_sync.pipeline import progress
    from flows.sync_users import SyncFailed, sync_users

    # A bar only for a person watching: piped or scheduled output stays plain text.
    bar = progress.TerminalProgressBar(sys.stdout) if sys.stdout.isatty() else None
    if bar is not None:
        progress.add_listener(bar)
    try:
        summary = sync_users(
            dry_run=args.dry_run,
            max_pages=args.max_pages,
            migrate_ids=args.migrate_ids,
            approve_deletions=args.approve_deletions,
        )
    except SyncFailed as exc:
        if bar is not None:
            bar.close()  # end the bar's line before the message
        print(f"sync-users failed: {scrub(str(exc))}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            progress.remove_listener(bar)
            bar.close()
    if args.json:
        print(json.dumps(scrub_obj(summary), indent=2, default=str))
    return 0


def cmd_backfill_events(args) -> int:
    _require_credentials()
    from flows.backfill_events import backfill_events
    from flows.sync_users import SyncFailed

    try:
        result = backfill_events(since=args.since, until=args.until, dry_run=args.dry_run)
    except (SyncFailed, ValueError) as exc:
        print(f"backfill-events failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{'dry run: ' if args.dry_run else ''}events created {result['since']} .. {result['until']}")
    for name, count in sorted(result["events"].items()):
        print(f"  events {name}: {count}")
    for name, count in sorted(result["event_skip_reasons"].items()):
        print(f"  events skipped {name}: {count}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    return 0


def cmd_lease_show(args) -> int:
    from cio_sync.settings import StateSettings
    from cio_sync.store import db
    from cio_sync.store.lease import list_leases

    rows = list_leases(db.get_engine(StateSettings().state_database_url))
    if not rows:
        print("no lease is held")
    for row in rows:
        state = "expired" if row.expired() else ("holder process gone" if row.process_gone() else "held")
        print(
            f"{row.name:<24} {state:<20} until {row.expires_at.isoformat(timespec='seconds')}  "
            f"renewed {row.renewed_at.isoformat(timespec='seconds') if row.renewed_at else '-'}\n"
            f"    {row.holder}"
        )
    return 0


def cmd_lease_release(args) -> int:
    from cio_sync.settings import StateSettings
    from cio_sync.store import db
    from cio_sync.store.lease import force_release

    row = force_release(db.get_engine(StateSettings().state_database_url), args.name)
    if row is None:
        print(f"no lease named {args.name!r} (see `cio-sync lease show`)", file=sys.stderr)
        return 1
    print(f"released {row.name!r}, held by {row.holder}")
    return 0


def cmd_explain(args) -> int:
    """Reads only the state database: no Prefect server, no Hull, no Customer.io."""
    from cio_sync.pipeline.explain import ExplainError, candidates_lines, explain, render
    from cio_sync.settings import StateSettings
    from cio_sync.store import db

    try:
        report = explain(db.get_engine(StateSettings().state_database_url), args.person)
    except ExplainError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        for line in candidates_lines(exc.candidates):
            print(scrub(line), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(scrub_obj(report), indent=2, default=str, ensure_ascii=False))
        return 0
    for line in render(report):
        print(scrub(line))
    return 0


def cmd_check(args) -> int:
    from cio_sync.pipeline.check import check_connection

    findings = check_connection()
    for finding in findings:
        print(f"{finding.level.upper():8} {scrub(finding.message)}")
    return 1 if any(f.level == "error" for f in findings) else 0


def cmd_demo(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        # A throwaway Prefect home: the demo's runs never mix with a real one, and the
        # flow-run log lines stay out of the way of the demo's own report.
        import tempfile

        os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cio-sync-demo-prefect-"))
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from cio_sync.cli.demo import run_demo

    return run_demo(users=args.users)


def cmd_webhook_server(args) -> int:
    from cio_sync.webhooks.app import serve

    serve(args.host, args.port, insecure_no_signature=args.insecure_no_signature)
    return 0


def cmd_drain_webhooks(args) -> int:
    from connectors.http import AuthError
    from flows.drain_webhooks import DrainStopped, drain_webhooks

    _require_credentials(customerio=False)

    try:
        summary = drain_webhooks(batch_size=args.batch_size, max_batches=args.max_batches)
    except (DrainStopped, AuthError) as exc:
        print(f"drain-webhooks stopped: {scrub(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(scrub_obj(summary), indent=2, default=str))
    return 0


def cmd_failed_list(args) -> int:
    from cio_sync.settings import StateSettings
    from cio_sync.store import db
    from cio_sync.store.failed import describe, list_failed_batches

    engine = db.get_engine(StateSettings().state_database_url)
    batches = list_failed_batches(engine, status=None if args.all else "open")
    if not batches:
        print("no failed batches" if args.all else "no open failed batches")
    for batch in batches:
        print(scrub(describe(batch)))
    from cio_sync.webhooks.inbox import FAILED, count_by_status

    failed_webhooks = count_by_status(engine)[FAILED]
    if failed_webhooks:
        print(
            f"webhook inbox: {failed_webhooks} rows failed (their reasons are on the rows; "
            "`cio-sync failed rerun --webhooks` sends them again)"
        )
    return 0


def cmd_failed_rerun(args) -> int:
    from connectors.http import AuthError
    from flows.rerun_failed_batches import RerunIncomplete, rerun_failed_batches

    _require_credentials()

    try:
        result = rerun_failed_batches(batch_ids=args.ids or None, requeue_failed_webhooks=args.webhooks)
    except (RerunIncomplete, AuthError) as exc:
        print(f"rerun incomplete: {scrub(str(exc))}", file=sys.stderr)
        return 1
    for row in result["batches"]:
        print(scrub(f"#{row['batch']} {row['kind']}: {row['result']} {row['error']}".rstrip()))
    for change in result.get("settings_changed", []):
        print(f"setting changed since a batch was saved: {change}")
    if not result["batches"]:
        print("nothing to rerun")
    return 0


def cmd_db_upgrade(args) -> int:
    from cio_sync.settings import StateSettings
    from cio_sync.store import db

    url = StateSettings().state_database_url
    db.upgrade(db.get_engine(url, migrate=False))
    print("state database is at the latest schema")
    return 0


def cmd_setup(args) -> int:
    from cio_sync.cli.serve import NeedsPrefectServer
    from cio_sync.cli.workspace import setup_workspace

    try:
        result = setup_workspace(args.work_pool, args.requests_per_second, args.burst)
    except NeedsPrefectServer as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in result.lines():
        print(line)
    if args.notify_block:
        from cio_sync.cli.alerts import NotifyBlockNotFound, ensure_alerts

        try:
            alerts = ensure_alerts(args.notify_block)
        except NotifyBlockNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in alerts.lines():
            print(line)
    return 0


def cmd_serve(args) -> int:
    from cio_sync.cli.serve import DeployedOnWorkPool, NeedsPrefectServer, serve_deployments

    try:
        serve_deployments(limit=args.limit, replace=args.replace)
    except (NeedsPrefectServer, DeployedOnWorkPool) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cio-sync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync-users", help="run the user sync once, settings from the environment")
    p.add_argument("--dry-run", action="store_true", help="decide and report, send nothing, change no state")
    p.add_argument("--max-pages", type=int, default=None, help="stop after this many pages")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument(
        "--migrate-ids",
        action="store_true",
        help="user_id_mapping changed: move every person to its new id (on_id_change, merge by default)",
    )
    p.add_argument(
        "--approve-deletions",
        action="store_true",
        help="delete the people of the deletion plan awaiting approval (see the `deletion-plan` "
        "artifact), even over max_deletions_per_run",
    )
    p.set_defaults(func=cmd_sync_users)

    p = sub.add_parser(
        "backfill-events",
        help="send the events of a past window once (the schedule never sends events older than events_start)",
    )
    p.add_argument("--since", required=True, help="start of the window, ISO 8601 (e.g. 2026-10-01T00:00:00Z)")
    p.add_argument("--until", default=None, help="end of the window, ISO 8601 (default: now)")
    p.add_argument("--dry-run", action="store_true", help="decide and count, send nothing, change no state")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=cmd_backfill_events)

    p = sub.add_parser("lease", help="the users-writer leases of the state database")
    lease_sub = p.add_subparsers(dest="lease_command", required=True)
    show = lease_sub.add_parser("show", help="list the leases held and by whom")
    show.set_defaults(func=cmd_lease_show)
    release = lease_sub.add_parser("release", help="release a lease whoever holds it (only when its run is gone)")
    release.add_argument("name", help="e.g. users:all, users:shard:0/4")
    release.set_defaults(func=cmd_lease_release)

    p = sub.add_parser(
        "explain",
        help="what happened to one person: state, sync log, events, failed work, email activity (database only)",
    )
    p.add_argument("person", help="a Hull id, a Customer.io id or an email")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_explain)

    from cio_sync.cli import state

    p = sub.add_parser("resync", help="make the next sync-users run send these people again (no Customer.io call now)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--all", action="store_true", help="every person in the state database")
    who.add_argument("--segment", action="append", metavar="NAME", help="a synchronized segment's name or id (Hull)")
    who.add_argument("--user", nargs="+", metavar="ID", help="Hull user ids")
    p.add_argument(
        "--yes", "--approve", action="store_true", help="approve a resync over MAX_RESYNC_WITHOUT_APPROVAL people"
    )
    p.set_defaults(func=state.cmd_resync)

    p = sub.add_parser("cursor", help="where each stream (users, events, shards) resumes")
    cursor_sub = p.add_subparsers(dest="cursor_command", required=True)
    show = cursor_sub.add_parser("show", help="every stream cursor and events_start")
    show.set_defaults(func=state.cmd_cursor_show)
    move = cursor_sub.add_parser("set", help="move a stream cursor (forwards or back), after a confirmation")
    move.add_argument("name", help="e.g. users, events, users:shard:0/4")
    move.add_argument("position", help="ISO 8601 time with a time zone, e.g. 2026-11-20T08:00:00Z")
    move.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    move.set_defaults(func=state.cmd_cursor_set)

    p = sub.add_parser("check", help="check credentials and settings (non-zero exit on a problem)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="run the sync against local simulators of Hull and Customer.io")
    p.add_argument("--users", type=int, default=300)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("webhook-server", help="serve the signed Customer.io webhook intake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--insecure-no-signature", action="store_true", help="accept unsigned webhooks (only for trying things out)"
    )
    p.set_defaults(func=cmd_webhook_server)

    p = sub.add_parser("drain-webhooks", help="send stored webhooks to Hull once")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--max-batches", type=int, default=None)
    p.set_defaults(func=cmd_drain_webhooks)

    p = sub.add_parser("failed", help="work that failed after retries")
    failed_sub = p.add_subparsers(dest="failed_command", required=True)
    listing = failed_sub.add_parser("list", help="show open failed batches")
    listing.add_argument("--all", action="store_true", help="resolved ones too")
    listing.set_defaults(func=cmd_failed_list)
    rerun = failed_sub.add_parser("rerun", help="redo failed batches (all open ones when no id is given)")
    rerun.add_argument("ids", nargs="*", type=int)
    rerun.add_argument("--webhooks", action="store_true", help="also send webhook inbox rows marked failed again")
    rerun.set_defaults(func=cmd_failed_rerun)

    p = sub.add_parser("db", help="state database maintenance")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply schema migrations")
    up.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("setup", help="create the Prefect work pool and the shared Customer.io rate limit")
    p.add_argument("--work-pool", default="cio-sync", help="process work pool of prefect.yaml")
    p.add_argument(
        "--requests-per-second",
        type=float,
        default=100.0,
        help="Customer.io requests/s for all runs, shards and workers together",
    )
    p.add_argument("--burst", type=int, default=None, help="requests allowed at once (default: a tenth of a second's)")
    p.add_argument(
        "--notify-block",
        default=None,
        metavar="NAME",
        help="also create the alert automations (failed runs, no completed sync, webhook backlog, "
        "failed batches left open), notifying through this Prefect notification block",
    )
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("serve", help="run every deployment on its schedule in this process (no worker needed)")
    p.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    p.add_argument(
        "--replace",
        action="store_true",
        help="delete deployments of the same names made by `prefect deploy` (work pool) first",
    )
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_prefect_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if not (args.command == "failed" and getattr(args, "failed_command", "") == "list") and args.command != "lease":
        _say_if_starting_prefect(args.command)
    from cio_sync.settings import SettingsError

    try:
        return args.func(args)
    except SettingsError as exc:  # names variables, never values
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
