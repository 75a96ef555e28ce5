"""The webhook scenario of the benchmark (`bench/run.py --scenario webhooks`).

Intake, per database (SQLite file; a fresh PostgreSQL database at 127.0.0.1:5432):
- `cio-sync webhook-server` runs as production runs it (uvicorn, log level info) in its own
  process. A load client in the bench process keeps 50 HTTP/1.1 keep-alive connections busy
  (asyncio, raw sockets, each request signed as Customer.io signs it: HMAC-SHA256 over
  `v0:<timestamp>:<body>`), with realistic bodies (the payloads of tests/fixtures/webhooks, each
  with its own event_id and customer). Reported: acknowledgements/s, p50/p99 latency (request
  written to response read), the server's CPU per request.
- Proof that every payload was committed before its 2xx: after the run, every acknowledged
  event_id is in `webhook_inbox` (row count and ids compared); and a second, short pass looks
  each row up from another database connection as soon as its 2xx arrives.
- Floor: a bare ASGI app (reads the body, answers a fixed 200) under the same uvicorn with the
  same settings, driven by the same client in the same run.

Drain: the `drain-webhooks` flow (one worker process, Prefect server) sends the stored rows to
the Hull simulator; rows/s next to a floor of bare `requests` POSTs of the same firehose
messages (built and signed beforehand), 50 per POST. "rows/s in batches" divides by the wall
time spent inside the batches (`drain_batch`, what each Prefect task runs) instead of the whole
flow call, which also holds the flow run's fixed start and end (creating the run, the summary
queries and artifact). The worker's process start-up (imports, the schema check) is paid
before the timed run. `--hull-latency-ms` makes the Hull simulator answer every request that
late, as a real Hull over a network does (the floor, one POST at a time, pays it per POST).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
SIGNING_KEY = "bench-webhook-signing-key-0123456789"
CONCURRENCY = 50
TEMPLATES = [
    "reporting-email-opened.json",
    "reporting-email-clicked.json",
    "reporting-customer-subscribed.json",
    "legacy-email-opened.json",
]
POSTGRES_ADMIN_URL = os.environ.get("CIO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# ----- payloads and the load client ------------------------------------------------------------


def payloads(count: int, prefix: str) -> list[tuple[str, bytes]]:
    """(event_id, body): the fixture payloads, each with its own event_id and one of 5,000 people."""
    templates = [json.loads((FIXTURES / name).read_text()) for name in TEMPLATES]
    result = []
    for n in range(count):
        payload = json.loads(json.dumps(templates[n % len(templates)]))
        event_id = f"{prefix}{n:012d}"
        payload["event_id"] = event_id
        customer = f"u-{n % 5000 + 1}"
        data = payload["data"]
        data["customer_id"] = customer
        if isinstance(data.get("identifiers"), dict):
            data["identifiers"]["id"] = customer
        result.append((event_id, json.dumps(payload, separators=(",", ":")).encode()))
    return result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _send_all(port: int, bodies: list[tuple[str, bytes]], concurrency: int, after_ack=None) -> dict[str, Any]:
    from cio_sync.webhooks.signature import compute_signature

    queue = iter(range(len(bodies)))
    latencies = [0.0] * len(bodies)
    statuses = [0] * len(bodies)
    checks: list[bool] = []

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in queue:
                event_id, body = bodies[index]
                stamp = str(int(time.time()))
                head = (
                    f"POST /webhooks/customerio HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"X-CIO-Timestamp: {stamp}\r\nX-CIO-Signature: {compute_signature(SIGNING_KEY, stamp, body)}"
                    f"\r\n\r\n"
                ).encode()
                started = time.perf_counter()
                writer.write(head + body)
                status = int((await reader.readline()).split()[1])
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and value.strip().lower() == "close":
                        close = True
                await reader.readexactly(length)
                latencies[index] = time.perf_counter() - started
                statuses[index] = status
                if after_ack is not None and 200 <= status < 300:
                    checks.append(await asyncio.to_thread(after_ack, event_id))
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.perf_counter()
    times = os.times()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    after = os.times()
    ok = [i for i, status in enumerate(statuses) if 200 <= status < 300]
    return {
        "sent": len(bodies),
        "acked": len(ok),
        "seconds": seconds,
        "rate": len(ok) / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "statuses": sorted(set(statuses)),
        "acked_ids": [bodies[i][0] for i in ok],
        "client_cpu_s": (after.user - times.user) + (after.system - times.system),
        "checks": checks,
    }


def send_all(port: int, bodies: list[tuple[str, bytes]], concurrency: int = CONCURRENCY, after_ack=None) -> dict:
    return asyncio.run(_send_all(port, bodies, concurrency, after_ack))


# ----- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess answering on 127.0.0.1:port once `/healthz` (or any path) answers."""

    def __init__(self, command: list[str], env: dict[str, str], log_name: str):
        import requests

        self.port = free_port()
        self.log = open(OUT / log_name, "w")
        self.cwd = tempfile.mkdtemp(prefix="cio-bench-webhooks-")  # no stray .env
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=self.cwd,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                return
            except requests.RequestException:
                if self.process.poll() is not None:
                    break
                time.sleep(0.3)
        raise RuntimeError(f"{command} did not start; see {self.log.name}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully (and dumps a profile)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def floor_app():
    """The transport floor: the smallest ASGI app answering what the intake answers."""
    response = b'{"status":"stored"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(response)).encode())]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": response})

    return app


def serve_floor(port: int) -> None:
    import uvicorn

    uvicorn.run(floor_app(), host="127.0.0.1", port=port, log_level="info")  # as cio_sync.webhooks.app.serve


def serve_profiled(port: int, output: str) -> None:
    """`cio-sync webhook-server` (the same `serve`) under cProfile: the event loop's thread, and
    the inbox writer's transactions (each profiled in its own thread's profiler)."""
    import cProfile
    import pstats
    import threading

    sys.path.insert(0, str(ROOT))
    import cio_sync.webhooks.app as app_module
    from bench.cpu import top
    from cio_sync.webhooks.writer import InboxWriter

    profiles: dict[int, cProfile.Profile] = {}
    lock = threading.Lock()
    write = InboxWriter._write

    def profiled_write(*args, **kwargs):
        ident = threading.get_ident()
        with lock:
            profile = profiles.setdefault(ident, cProfile.Profile())
        profile.enable()
        try:
            return write(*args, **kwargs)
        finally:
            profile.disable()

    InboxWriter._write = profiled_write
    main = cProfile.Profile()
    main.enable()
    try:
        app_module.serve("127.0.0.1", port, False)
    finally:
        main.disable()
        threads = None
        for profile in profiles.values():
            threads = pstats.Stats(profile) if threads is None else threads.add(profile) or threads
        stats = pstats.Stats(main)
        Path(output).write_text(
            json.dumps(
                {
                    "main": top(stats, 15),
                    "main_own": top(stats, 10, sort="tottime"),
                    "threads": top(threads, 8, sort="tottime"),
                }
            )
        )


# ----- the drain worker ------------------------------------------------------------------------


def drain_worker(spec: dict) -> dict:
    """Runs the drain-webhooks flow once in this (fresh) process."""
    import logging

    os.environ.update(spec["env"])
    sys.path.insert(0, str(ROOT))
    from bench import cpu

    cpu.patch_threads()
    from prefect import flow, task

    import tasks.drain_webhook_batch as batch_task
    from flows.drain_webhooks import drain_webhooks

    # Wall time inside the batches (the pipeline's work, without the flow run's own start and end).
    in_batches = [0.0]
    drain_batch = batch_task.drain_batch

    def timed_batch(*args, **kwargs):
        started = time.perf_counter()
        try:
            return drain_batch(*args, **kwargs)
        finally:
            in_batches[0] += time.perf_counter() - started

    batch_task.drain_batch = timed_batch

    logging.getLogger("prefect").setLevel(logging.WARNING)
    account = None
    if spec["cpu"] and not spec["profile"]:
        account = cpu.CpuAccount()
        cpu.install_flow_accounting(account)

    @task(name="bench-warm-up-task")
    def warm_up_task() -> None:
        """Imports Prefect's task engine."""

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """Pays the process's one-off start-up outside the timed run: Prefect's client and task
        engine, and the state database's first connection (its schema check imports Alembic)."""
        warm_up_task()

    warm_up()
    from cio_sync.settings import StateSettings
    from cio_sync.store.db import get_engine

    get_engine(StateSettings().state_database_url)
    load = os.getloadavg()[0]
    threads = cpu.ThreadCpu().start()
    work_before = account.snapshot() if account else {}
    profiler = cpu.Profiler().start() if spec["profile"] else None
    hull_before = process_cpu(spec["hull_pid"])
    started = time.perf_counter()
    summary = drain_webhooks(batch_size=spec["batch_size"])
    seconds = time.perf_counter() - started
    profiles = profiler.stop() if profiler else None
    use = threads.stop()
    if account:
        use["work"] = cpu.CpuAccount.delta(work_before, account.snapshot())
    use["processes"] = {"hull": process_cpu(spec["hull_pid"]) - hull_before}
    result = {
        "seconds": seconds,
        "in_batches": in_batches[0],
        "summary": summary,
        "load": load,
        "cpu": use,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if profiles:
        result["profile"] = {
            "main": cpu.top(profiles[0], 15),
            "main_own": cpu.top(profiles[0], 10, sort="tottime"),
            "threads": cpu.top(profiles[1], 8, sort="tottime"),
        }
    return result


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----- the scenario ----------------------------------------------------------------------------


def fresh_database(kind: str) -> tuple[str, Any]:
    if kind == "sqlite":
        path = OUT / "webhooks.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", lambda: None
    import psycopg

    name = f"cio_sync_bench_{uuid.uuid4().hex[:10]}"
    libpq = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from cio_sync.store import db

        db.dispose_engines()
        with psycopg.connect(libpq, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def inbox_ids(database_url: str) -> list[str]:
    from sqlalchemy import select

    from cio_sync.store import db

    with db.get_engine(database_url).connect() as connection:
        return list(connection.execute(select(db.webhook_inbox.c.event_id)).scalars())


def intake(kind: str, database_url: str, count: int, profile: bool, process_cpu_seconds) -> tuple[dict, dict | None]:
    """One database: the intake run, its proofs, its floor (same run)."""
    from sqlalchemy import select

    from cio_sync.store import db

    env = {"CUSTOMERIO_WEBHOOK_SIGNING_KEY": SIGNING_KEY, "STATE_DATABASE_URL": database_url}
    db.get_engine(database_url)  # migrated before the server starts, as `cio-sync db upgrade` would
    profile_file = OUT / f"webhook-server-{kind}.profile.json"
    if profile:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-profiled", str(profile_file)]
    else:
        command = [sys.executable, "-m", "cio_sync.cli", "webhook-server", "--host", "127.0.0.1"]
    server = Server(command, env, f"webhook-server-{kind}.log")
    try:
        send_all(server.port, payloads(500, "01WARMUP"))  # connections, imports, caches
        load = os.getloadavg()[0]
        before = process_cpu_seconds(server.process.pid)
        run = send_all(server.port, payloads(count, "01BENCH"))
        run["server_cpu_s"] = process_cpu_seconds(server.process.pid) - before
        run["load"] = load
        # Every acknowledged payload is in the inbox.
        stored = set(inbox_ids(database_url))
        run["missing"] = len(set(run["acked_ids"]) - stored)
        run["rows"] = len(stored)
        # Each row is visible to another connection as soon as its 2xx arrives.
        engine = db.get_engine(database_url)

        def visible(event_id: str) -> bool:
            with engine.connect() as connection:
                return (
                    connection.execute(
                        select(db.webhook_inbox.c.id).where(db.webhook_inbox.c.event_id == event_id)
                    ).first()
                    is not None
                )

        checked = send_all(server.port, payloads(500, "01CHECK"), after_ack=visible)
        run["visible_after_ack"] = f"{sum(checked['checks'])}/{len(checked['checks'])}"
    finally:
        server.stop()
    profile_rows = json.loads(profile_file.read_text()) if profile and profile_file.exists() else None

    floor_server = Server([sys.executable, str(Path(__file__).resolve()), "--floor-server"], {}, "webhook-floor.log")
    try:
        send_all(floor_server.port, payloads(500, "01WARMUP"))
        load = os.getloadavg()[0]
        before = process_cpu_seconds(floor_server.process.pid)
        floor = send_all(floor_server.port, payloads(count, "01FLOOR"))
        floor["server_cpu_s"] = process_cpu_seconds(floor_server.process.pid) - before
        floor["load"] = load
    finally:
        floor_server.stop()
    return {"run": run, "floor": floor}, profile_rows


def drain(kind: str, database_url: str, hull, prefect_server, profile: bool, cpu: bool) -> tuple[dict, dict]:
    from simulators.env import RemoteCustomerIo, RemoteHull, simulator_environment

    env = {
        "PREFECT_API_URL": prefect_server.url,
        "PREFECT_HOME": prefect_server.home,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **{
            k: v
            for k, v in simulator_environment(
                RemoteHull(
                    hull.url,
                    "acme.hullapp.io",
                    "5bd329d5e2bcf3eeaf00be0c",
                    "bench-connector-secret-0123456789abcdefghij",
                ),
                RemoteCustomerIo("http://127.0.0.1:9"),
                database_url,
            ).items()
            if k.startswith(("HULL_", "STATE_"))
        },
    }
    spec = {"env": env, "profile": profile, "cpu": cpu, "batch_size": 500, "hull_pid": hull.process.pid}
    spec_file, result_file = OUT / f"drain-spec-{kind}.json", OUT / f"drain-result-{kind}.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    with open(OUT / f"drain-worker-{kind}.log", "w") as log:
        code = subprocess.call(
            [sys.executable, str(Path(__file__).resolve()), "--drain-worker", str(spec_file), str(result_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if code != 0 or not result_file.exists():
        raise RuntimeError(f"drain worker failed (exit {code}); see bench/out/drain-worker-{kind}.log")
    result = json.loads(result_file.read_text())
    return result, firehose_floor(hull, min(10_000, result["summary"]["sent"] or 10_000))


def firehose_floor(hull, count: int) -> dict:
    """Bare `requests` POSTs of prebuilt, signed firehose messages (50 per POST), as the drain
    sends them (same mapping), with their own event ids."""
    import requests

    from cio_sync.webhooks.mapping import Mapped, map_stored_payload
    from connectors.hull import HullClient, dumps

    client = HullClient(
        f"{hull.url}/api/v1",
        f"{hull.url}/firehose",
        "acme.hullapp.io",
        "5bd329d5e2bcf3eeaf00be0c",
        "bench-connector-secret-0123456789abcdefghij",
    )
    messages = []
    for _, body in payloads(count, "01HOSEFLOOR"):
        mapped = map_stored_payload(body.decode(), "external_id")
        if isinstance(mapped, Mapped):
            messages.append(client.track_message(mapped.claims, mapped.event))
    client.close()
    posts = [dumps({"batch": messages[i : i + 50]}) for i in range(0, len(messages), 50)]
    headers = {
        "Hull-App-Id": "5bd329d5e2bcf3eeaf00be0c",
        "Hull-Access-Token": "bench-connector-secret-0123456789abcdefghij",
        "Hull-Organization": "acme.hullapp.io",
        "Content-Type": "application/json",
    }
    load = os.getloadavg()[0]
    with requests.Session() as session:
        started = time.perf_counter()
        for body in posts:
            session.post(f"{hull.url}/firehose", data=body, headers=headers).raise_for_status()
        seconds = time.perf_counter() - started
    return {"rows": len(messages), "seconds": seconds, "rate": len(messages) / seconds, "load": load}


INTAKE_COLUMNS = [
    ("database", "db", 0),
    ("server", "server", 0),
    ("load", "load", 2),
    ("webhooks", "sent", 0),
    ("2xx", "acked", 0),
    ("seconds", "seconds", 1),
    ("2xx/s", "rate", 0),
    ("p50 ms", "p50_ms", 1),
    ("p99 ms", "p99_ms", 1),
    ("server CPU ms/request", "cpu_ms", 2),
    ("client CPU s", "client_cpu_s", 1),
    ("rows in inbox", "rows", 0),
    ("acked but missing", "missing", 0),
    ("visible right after 2xx", "visible_after_ack", 0),
    ("vs floor", "vs_floor", 0),
]
DRAIN_COLUMNS = [
    ("database", "db", 0),
    ("run", "run", 0),
    ("load", "load", 2),
    ("rows sent", "rows", 0),
    ("seconds", "seconds", 1),
    ("rows/s", "rate", 0),
    ("seconds in batches", "in_batches", 1),
    ("rows/s in batches", "batch_rate", 0),
    ("Prefect task runs", "tasks", 0),
    ("flow process CPU s", "process", 1),
    ("Hull sim CPU s", "hull", 1),
    ("flow peak RSS MB", "rss", 0),
    ("vs floor", "vs_floor", 0),
]


def webhooks_scenario(args, prefect_server_class, simulator_class, process_cpu_seconds) -> str:
    from bench.run import markdown, profile_section  # type: ignore[import-not-found]

    count = args.webhooks
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    print(
        f"bench webhooks: {count:,} signed webhooks per database at {CONCURRENCY} concurrent senders, "
        f"databases {kinds}{', profiled' if args.profile else ''}",
        flush=True,
    )
    intake_rows: list[dict] = []
    drain_rows: list[dict] = []
    profiles: list[str] = []
    hull = simulator_class("hull", False)
    prefect_server = prefect_server_class()
    try:
        import requests

        requests.post(f"{hull.url}/_sim/journal", json={"record": False, "clear": True}, timeout=60).raise_for_status()
        if args.hull_latency_ms:  # every Hull request waits this long, as over a real network
            requests.post(
                f"{hull.url}/_sim/faults", json={"op": "latency", "seconds": args.hull_latency_ms / 1000}, timeout=60
            ).raise_for_status()
        for kind in kinds:
            try:
                database_url, drop = fresh_database(kind)
            except Exception as exc:  # no PostgreSQL here: say so in the results
                intake_rows.append({"db": kind, "server": f"not measured: {type(exc).__name__}"})
                continue
            try:
                measured, server_profile = intake(kind, database_url, count, args.profile, process_cpu_seconds)
                run, floor = measured["run"], measured["floor"]
                for label, row in (("cio-sync webhook-server", run), ("floor: bare ASGI app, same uvicorn", floor)):
                    intake_rows.append(
                        {
                            **row,
                            "db": kind if row is run else "-",
                            "server": label,
                            "cpu_ms": 1000 * row["server_cpu_s"] / max(1, row["acked"]),
                        }
                    )
                if not args.profile:
                    intake_rows[-2]["vs_floor"] = f"{100 * run['rate'] / floor['rate']:.0f}%"
                else:
                    intake_rows[-2]["vs_floor"] = "profiled: not a throughput figure"
                print(
                    f"intake {kind}: {run['rate']:,.0f} 2xx/s, p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
                    f"statuses {run['statuses']}, rows {run['rows']:,}, missing {run['missing']}, visible "
                    f"{run['visible_after_ack']}; floor {floor['rate']:,.0f}/s",
                    flush=True,
                )
                if server_profile:
                    profiles.append(
                        profile_section(f"webhook intake on {kind}, {count:,} webhooks", server_profile).replace(
                            "Pool threads (senders, write-back, prefetch)", "Inbox writer thread"
                        )
                    )
                result, hose = drain(kind, database_url, hull, prefect_server, args.profile, args.cpu_by_kind)
                sent = result["summary"]["sent"]
                drain_rows.append(
                    {
                        "db": kind,
                        "run": "drain-webhooks flow",
                        "load": result["load"],
                        "rows": sent,
                        "seconds": result["seconds"],
                        "rate": sent / result["seconds"],
                        "in_batches": result["in_batches"],
                        "batch_rate": sent / result["in_batches"] if result["in_batches"] else None,
                        "process": result["cpu"]["process_cpu_s"],
                        "hull": result["cpu"]["processes"]["hull"],
                        "rss": result["rss_mb"],
                        "tasks": result["summary"].get("batches"),
                        "vs_floor": (
                            "profiled: not a throughput figure"
                            if args.profile
                            else f"{100 * sent / result['seconds'] / hose['rate']:.0f}%"
                        ),
                    }
                )
                drain_rows.append({"db": "-", "run": "floor: bare firehose POSTs", **hose})
                print(
                    f"drain {kind}: {sent:,} rows in {result['seconds']:.1f} s; floor {hose['rate']:,.0f}/s; "
                    f"summary {result['summary']}",
                    flush=True,
                )
                if "profile" in result:
                    profiles.append(profile_section(f"drain-webhooks on {kind}, {sent:,} rows", result["profile"]))
            finally:
                drop()
    finally:
        prefect_server.stop()
        hull.stop()
    parts = [
        f"Webhooks: {count:,} signed webhooks per database, {CONCURRENCY} concurrent keep-alive senders "
        f"(bench/webhooks.py), then `drain-webhooks` (batch_size 500) into the Hull simulator"
        + (f", which answers every request {args.hull_latency_ms} ms late." if args.hull_latency_ms else "."),
        markdown(INTAKE_COLUMNS, intake_rows),
        markdown(DRAIN_COLUMNS, drain_rows),
        *profiles,
    ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    if sys.argv[1] == "--floor-server":
        serve_floor(int(sys.argv[sys.argv.index("--port") + 1]))
    elif sys.argv[1] == "--serve-profiled":
        serve_profiled(int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[2])
    elif sys.argv[1] == "--drain-worker":
        result = drain_worker(json.loads(Path(sys.argv[2]).read_text()))
        Path(sys.argv[3]).write_text(json.dumps(result, default=str))
