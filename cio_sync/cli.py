"""`cio-sync`: run the flows and the webhook intake from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _quiet_prefect_defaults() -> None:
    # Without PREFECT_API_URL Prefect starts a throwaway server per command; keep its
    # start-up and shutdown chatter (and its telemetry) out of a successful command's output.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_sync_users(args) -> int:
    from flows.sync_users import SyncFailed, sync_users

    try:
        summary = sync_users(dry_run=args.dry_run, max_pages=args.max_pages)
    except SyncFailed as exc:
        print(f"sync-users failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_check(args) -> int:
    from cio_sync.check import check_connection

    findings = check_connection()
    for finding in findings:
        print(f"{finding.level.upper():8} {finding.message}")
    return 1 if any(f.level == "error" for f in findings) else 0


def cmd_demo(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        # A throwaway Prefect home: the demo's runs never mix with a real one, and the
        # flow-run log lines stay out of the way of the demo's own report.
        import tempfile

        os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cio-sync-demo-prefect-"))
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from cio_sync.demo import run_demo

    return run_demo(users=args.users)


def cmd_webhook_server(args) -> int:
    from cio_sync.webhooks.app import serve

    serve(args.host, args.port, insecure_no_signature=args.insecure_no_signature)
    return 0


def cmd_drain_webhooks(args) -> int:
    from flows.drain_webhooks import drain_webhooks

    summary = drain_webhooks(batch_size=args.batch_size)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_db_upgrade(args) -> int:
    from cio_sync import db
    from cio_sync.settings import StateSettings

    url = StateSettings().state_database_url
    db.upgrade(db.get_engine(url, migrate=False))
    print("state database is at the latest schema")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cio-sync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync-users", help="run the user sync once, settings from the environment")
    p.add_argument("--dry-run", action="store_true", help="decide and report, send nothing, change no state")
    p.add_argument("--max-pages", type=int, default=None, help="stop after this many pages")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=cmd_sync_users)

    p = sub.add_parser("check", help="check credentials and settings (non-zero exit on a problem)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="run the sync against local simulators of Hull and Customer.io")
    p.add_argument("--users", type=int, default=300)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("webhook-server", help="serve the signed Customer.io webhook intake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--insecure-no-signature", action="store_true",
                   help="accept unsigned webhooks (only for trying things out)")
    p.set_defaults(func=cmd_webhook_server)

    p = sub.add_parser("drain-webhooks", help="send stored webhooks to Hull once")
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(func=cmd_drain_webhooks)

    p = sub.add_parser("db", help="state database maintenance")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply schema migrations")
    up.set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_prefect_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from cio_sync.settings import MissingSettingsError

    try:
        return args.func(args)
    except MissingSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
