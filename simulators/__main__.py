"""Run a simulator in the foreground until SIGTERM/SIGINT.

    python -m simulators hull --port 9100 [--seed-users 1000]
    python -m simulators customerio --port 9200

Prints ``ready <url>`` (flushed) once listening, so a parent process can wait for it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .customerio import CustomerIoSimulator
from .hull import DEFAULT_CONNECTOR_ID, HullSimulator
from .seed import seed_synthetic


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators")
    sub = parser.add_subparsers(dest="service", required=True)

    hull = sub.add_parser("hull", help="Hull REST API + firehose")
    hull.add_argument("--port", type=int, default=9100)
    hull.add_argument("--host", default="127.0.0.1")
    hull.add_argument("--organization", default="acme.hullapp.io")
    hull.add_argument("--connector-id", default=DEFAULT_CONNECTOR_ID)
    hull.add_argument("--connector-secret", default="secret")
    hull.add_argument("--seed-users", type=int, default=0, help="seed this many synthetic users before serving")
    hull.add_argument("--seed", type=int, default=0, help="random seed for --seed-users")

    cio = sub.add_parser("customerio", help="Customer.io Track API")
    cio.add_argument("--port", type=int, default=9200)
    cio.add_argument("--host", default="127.0.0.1")
    cio.add_argument("--site-id", default="site")
    cio.add_argument("--api-key", default="key")
    cio.add_argument("--region", default="us", choices=("us", "eu"))
    cio.add_argument("--max-attributes-per-request", type=int, default=300)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.service == "hull":
        sim = HullSimulator(args.organization, args.connector_id, args.connector_secret, host=args.host, port=args.port)
        if args.seed_users:
            seed_synthetic(sim, args.seed_users, seed=args.seed)
    else:
        sim = CustomerIoSimulator(
            args.site_id, args.api_key, args.region, args.max_attributes_per_request, host=args.host, port=args.port
        )

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    sim.start()
    print(f"ready {sim.url}", flush=True)
    try:
        while not stopping.wait(0.5):  # a timed wait keeps signal delivery prompt
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
