"""Benchmark of the sync and the webhooks: `make bench` (or `python bench/run.py --users 100000 --mode both`).

Scenarios (`--scenario users|webhooks|all`, default `users`):

users (with `--events`, the events phase too), per mode (v1, v2_batch):
1. Starts the Hull and Customer.io simulators as subprocesses (`--sims inprocess` runs them in
   this process instead; they then share its GIL), seeds N synthetic users into Hull (and
   0-3 events each, 1.5 on average, of the three names `--events` whitelists).
2. Measures the raw floors once: a bare `requests.Session` loop sending the same identify calls
   (the connector's own mapping of the seeded users) to the same Customer.io simulator, on one
   thread and on `push_concurrency` threads (one Session each); with `--events`, the same for
   the connector's own event calls of those users (`POST /api/v1/customers/{id}/events`).
3. Runs the sync-users flow in a fresh worker process (client-side rate limit off), against a
   Prefect server started for the benchmark under a temporary PREFECT_HOME, with a fresh
   SQLite state database under bench/out/. Then a rerun with nothing changed in Hull: it reads
   again every user the first run synced, because the write-back of `customerio/*` traits
   re-indexed them, and must find them all unchanged and send nothing.
4. For each run: users/s and Customer.io requests/s; with `--events`, the events phase's own
   wall time (events/s), its task count (events per task); the CPU seconds of the flow process
   (per thread group) and of the simulators and the Prefect server; the 1-minute load average
   before the run. With `--cpu-by-kind`, the flow's CPU by kind of work too (JSON, JWT, SQL,
   HTTP client, Prefect, the rest; see bench/cpu.py). That accounting times every wrapped call
   and costs the flow 4-14% of its throughput (measured: 30k v1 users phase 1,258 users/s with
   it, 1,432 without), so it is off unless asked for.
webhooks (bench/webhooks.py): signed webhooks at 50 concurrent senders into `cio-sync
   webhook-server` on SQLite and on PostgreSQL, next to a bare ASGI app under the same uvicorn;
   then the `drain-webhooks` flow into the Hull simulator, next to a bare firehose loop.

`--profile` runs the same scenarios under cProfile instead (separate runs: cProfile slows the
code two to three times) and records the top functions by cumulative time of each run.
Results are printed and appended, with the machine, to bench/RESULTS.md (`--no-record` skips).

While a sync runs, the Hull simulator's clock ticks one second per wall-clock second (as
Hull's does), so the write-back's re-indexing spreads over time like in production instead of
piling every user on one `indexed_at` second; the simulators' request journals are cleared
every second so their memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
HULL_CONNECTOR_ID = "5bd329d5e2bcf3eeaf00be0c"
HULL_SECRET = "bench-connector-secret-0123456789abcdefghij"
CIO_SITE_ID, CIO_API_KEY = "bench-site", "bench-key"
SEGMENTS = ["VIP", "Trial", "Churn Risk"]  # the seed's fourth segment is not synced
# 24 whitelisted + id, email, created_at, hull_segments = 28 attributes: one v1 identify each.
ATTRIBUTES = [
    "first_name",
    "last_name",
    "plan",
    "coconuts",
    "lifetime_value",
    "is_active",
    "last_order_at",
    "closeio/title",
    "closeio/lead_status",
    "tags",
    "signup_source",
    "country",
    "city",
    "language",
    "orders_count",
    "newsletter_opt_in",
    "nps_score",
    "trial_ends_at",
    "company_size",
    "role",
    "referral_code",
    "stripe/mrr",
    "stripe/customer_id",
    "account.name",
]
EVENTS = ["page", "Order Completed", "Signed Up"]
FLOOR_SAMPLE = 10_000  # identify calls the floor sends (a rate, so a sample is enough)


# ----- processes ---------------------------------------------------------------------------


class Simulator:
    """A simulator subprocess (`python -m simulators ... --port 0`) or an in-process one."""

    def __init__(self, service: str, inprocess: bool):
        self.service = service
        self.process = None
        self.instance = None
        if inprocess:
            from simulators import CustomerIoSimulator, HullSimulator

            if service == "hull":
                self.instance = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
            else:
                self.instance = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
            self.url = self.instance.url
            return
        extra = (
            ["--connector-id", HULL_CONNECTOR_ID, "--connector-secret", HULL_SECRET]
            if service == "hull"
            else ["--site-id", CIO_SITE_ID, "--api-key", CIO_API_KEY]
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulators", service, "--port", "0", *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("ready "):
            raise RuntimeError(f"{service} simulator did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def peak_rss_mb(self) -> float | None:
        if self.process is None:
            return None  # in-process: counted in this process
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """`prefect server start` under a temporary PREFECT_HOME: flows report to a real API, as
    in production, and nothing touches the developer's own Prefect."""

    def __init__(self):
        self.home = tempfile.mkdtemp(prefix="cio-bench-prefect-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": self.home,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_ENABLED": "false",
        }
        self.log = open(Path(self.home) / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import requests

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"Prefect server did not start; see {self.log.name}")

    def count_task_runs(self, flow_run_id: str) -> int:
        import requests

        response = requests.post(
            f"{self.url}/task_runs/count", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30
        )
        response.raise_for_status()
        return int(response.json())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


class Ticker:
    """Moves the Hull simulator's clock with wall time and keeps journals from growing."""

    def __init__(self, hull_url: str, cio_url: str):
        import requests

        self.session = requests.Session()
        self.hull_url, self.cio_url = hull_url, cio_url
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self.session.post(f"{self.hull_url}/_sim/advance", json={"seconds": 1})
            for url in (self.hull_url, self.cio_url):
                self.session.delete(f"{url}/_sim/journal")


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process and its descendants (the Prefect server's uvicorn)."""
    if pid is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += stats[current][1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


# ----- the floors --------------------------------------------------------------------------


def floor_users(hull_url: str, limit: int) -> list[dict]:
    """The first `limit` seeded users the connector sends: Hull id, Customer.io id, identify
    calls (same mapping, same chunking, same paths as the sync)."""
    from cio_sync.rules.mapping import chunk_attributes, map_user
    from cio_sync.settings import ConnectorSettings
    from connectors.customerio import customer_path
    from connectors.hull import HullClient

    settings = ConnectorSettings.resolve(synchronized_segments=SEGMENTS, synchronized_attributes=ATTRIBUTES)
    hull = HullClient(f"{hull_url}/api/v1", f"{hull_url}/firehose", "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET)
    names = {s["id"]: s["name"] for s in hull.segments()}
    whitelisted = {i for i, n in names.items() if n in SEGMENTS}
    users: list[dict] = []
    page = 1
    while len(users) < limit:
        data = hull.search_users([], page=page, per_page=100)["data"]
        if not data:
            break
        for user in data:
            mapped = map_user(user, settings, names, whitelisted)
            if mapped.cio_id and mapped.email and mapped.whitelisted_segment_ids:
                calls = [
                    (customer_path(mapped.cio_id), chunk)
                    for chunk in chunk_attributes(mapped.attributes, settings.max_attributes_per_call)
                ]
                users.append({"hull_id": mapped.hull_id, "cio_id": mapped.cio_id, "calls": calls})
        page += 1
        if page * 100 > 10_000:  # Hull's result window; the sample is big enough by then
            break
    hull.close()
    return users[:limit]


def identify_calls(users: list[dict]) -> list[tuple[str, dict]]:
    return [call for user in users for call in user["calls"]]


def event_calls(hull_url: str, users: list[dict]) -> list[tuple[str, dict]]:
    """The connector's own v1 event calls (path, body) for the whitelisted events of `users`."""
    from cio_sync.rules.events import SEND, EventUser, plan_event
    from cio_sync.settings import ConnectorSettings
    from connectors.customerio import customer_path
    from connectors.hull import HullClient

    settings = ConnectorSettings.resolve(synchronized_segments=SEGMENTS, events_filter=EVENTS)
    hull = HullClient(f"{hull_url}/api/v1", f"{hull_url}/firehose", "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET)
    cio_ids = {u["hull_id"]: u["cio_id"] for u in users}
    ids = list(cio_ids)
    calls: list[tuple[str, dict]] = []
    for start in range(0, len(ids), 25):  # 25 users have fewer than 100 events (0-3 each)
        filters = [{"terms": {"user_id": ids[start : start + 25]}}, {"terms": {"event": EVENTS}}]
        for event in hull.search_events(filters, page=1, per_page=100)["data"]:
            cio_id = cio_ids[event["user_id"]]
            plan = plan_event(event, EventUser(cio_id=cio_id, in_segments=True, has_mapped_id=True), settings)
            if plan.action == SEND:
                calls.append((customer_path(cio_id) + "/events", plan.body))
    hull.close()
    return calls


def source_ceiling(hull_url: str, batch_size: int) -> tuple[int, float]:
    """The source's own ceiling: a bare keyset walk of every user in the Hull simulator, with
    the connector's own queries, client and decoder (`fetch_users_page`), one page after the
    other, and nothing done with the users. Returns (users read, seconds)."""
    from cio_sync.pipeline.extract import fetch_users_page, walk_bound
    from cio_sync.store.cursors import Cursor
    from connectors.hull import HullClient

    hull = HullClient(f"{hull_url}/api/v1", f"{hull_url}/firehose", "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET)
    until = walk_bound(hull)
    cursor, read = Cursor(), 0
    started = time.perf_counter()
    while True:
        page = fetch_users_page(hull, cursor, batch_size, until=until)
        if not page.users:
            break
        read += len(page.users)
        cursor = page.cursor
    seconds = time.perf_counter() - started
    hull.close()
    return read, seconds


def raw_floor(cio_url: str, calls: list[tuple[str, dict]], threads: int, method: str = "PUT") -> float:
    """Calls/s of bare `requests.Session` loops, `threads` of them, one Session each."""
    import requests

    def run(part: list[tuple[str, dict]]) -> None:
        with requests.Session() as session:
            session.auth = (CIO_SITE_ID, CIO_API_KEY)
            for path, body in part:
                session.request(method, f"{cio_url}{path}", json=body).raise_for_status()

    parts = [calls[i::threads] for i in range(threads)]
    started = time.perf_counter()
    if threads == 1:
        run(calls)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, parts))
    return len(calls) / (time.perf_counter() - started)


# ----- the worker: one flow process per mode ---------------------------------------------------


def worker(spec: dict) -> dict:
    """Runs in its own process so its peak RSS and CPU are the flow's alone."""
    import logging

    os.environ.update(spec["env"])
    from bench import cpu

    cpu.patch_threads()  # before Prefect starts its threads: every thread's CPU is seen
    import requests
    from prefect import flow

    import cio_sync.pipeline.events_page as events_page_module
    import flows.sync_users as sync_users_module
    import tasks.sync_events_page as events_task
    import tasks.sync_users_page as users_task
    from flows.sync_users import sync_users

    logging.getLogger("prefect").setLevel(logging.WARNING)
    account = None
    if spec["cpu"] and not spec["profile"]:
        account = cpu.CpuAccount()
        cpu.install_flow_accounting(account)

    # Wall time of each phase and the tasks it ran (plain wrappers around the flow's helpers).
    phases: dict[str, float] = {}
    phase_cpu: dict[str, float] = {}  # CPU seconds of every process (flow, simulators, Prefect server)
    task_calls = {"users": 0, "events": 0}

    def all_cpu() -> float:
        times = os.times()
        return times.user + times.system + sum(v for v in others().values() if v is not None)

    def timed_phase(name: str, function):
        def wrapper(*args, **kwargs):
            started, cpu_before = time.perf_counter(), all_cpu()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
                phase_cpu[name] = phase_cpu.get(name, 0.0) + all_cpu() - cpu_before

        return wrapper

    def counted(name: str, function):
        def wrapper(*args, **kwargs):
            task_calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    if spec.get("no_plan_ahead"):
        # Measuring the lever: every page planned in its own task, as before PagePlanner.
        class NoPlanner:
            def __init__(self, runtime):
                pass

            def take(self, users):
                return None

            def submit(self, next_users):
                pass

            def recorded(self, users):
                pass

            def close(self):
                pass

        sync_users_module.PagePlanner = NoPlanner
    if spec.get("no_events_read_ahead"):
        # Measuring the lever: every events batch read by its own task, as before EventsReadAhead.
        events_page_module.EventsReadAhead.take = lambda self, cursor: None
        events_page_module.EventsReadAhead.submit = lambda self, cursor: None
    sync_users_module._sync_users_stream = timed_phase("users", sync_users_module._sync_users_stream)
    sync_users_module.walk_events = timed_phase("events", sync_users_module.walk_events)
    users_task.sync_page = counted("users", users_task.sync_page)
    events_task.run_events_page = counted("events", events_task.run_events_page)

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """Pays Prefect's one-off client start-up outside the timed runs."""

    warm_up()
    params = dict(
        synchronized_segments=SEGMENTS,
        synchronized_attributes=ATTRIBUTES,
        rate_limit_per_second=0,
        customerio_api=spec["mode"],
        **spec["params"],
    )
    if spec["events"]:
        params["events_filter"] = EVENTS
        # The seeded events are dated on the simulator's clock, not the wall clock: reach them.
        params["events_initial_lookback_hours"] = 20 * 365 * 24

    def cio_counts() -> dict:
        return requests.get(f"{spec['env']['CUSTOMERIO_TRACK_URL']}/_sim/state?summary=1", timeout=60).json()["counts"]

    def others() -> dict:
        return {name: process_cpu_seconds(pid) for name, pid in spec["pids"].items()}

    def timed(label: str) -> dict:
        before = cio_counts()
        phases.clear()
        phase_cpu.clear()
        task_calls.update(users=0, events=0)
        load = os.getloadavg()[0]
        others_before = others()
        threads = cpu.ThreadCpu().start()
        work_before = account.snapshot() if account else {}
        profiler = cpu.Profiler().start() if spec["profile"] else None
        started = time.perf_counter()
        state = sync_users(**params, return_state=True)
        seconds = time.perf_counter() - started
        profiles = profiler.stop() if profiler else None
        cpu_use = threads.stop()
        if account:
            cpu_use["work"] = cpu.CpuAccount.delta(work_before, account.snapshot())
        others_after = others()
        cpu_use["processes"] = {k: (others_after[k] - v if v is not None else None) for k, v in others_before.items()}
        if "events" in phase_cpu:
            cpu_use["events_all_cpu"] = phase_cpu["events"]
        cpu_use["phase_events_all_cpu"] = phase_cpu.get("events", 0.0)
        summary = state.result()
        after = cio_counts()
        requests_made = sum(after[k] - before[k] for k in ("identify", "delete", "event", "anonymous_event", "batch"))
        result = {
            "label": label,
            "seconds": seconds,
            "summary": summary,
            "cio_requests": requests_made,
            "batch_entries": after["batch_entries"] - before["batch_entries"],
            "flow_run_id": str(state.state_details.flow_run_id),
            "load": load,
            "phases": dict(phases),
            "task_calls": dict(task_calls),
            "cpu": cpu_use,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if profiles:
            main, pool = profiles
            result["profile"] = {
                "main": cpu.top(main, 15),
                "main_own": cpu.top(main, 10, sort="tottime"),
                "threads": cpu.top(pool, 8, sort="tottime"),
            }
            # The full profiles, for `python -m pstats` (bench/out is not committed).
            for part, stats in (("main", main), ("threads", pool)):
                if stats is not None:
                    stats.dump_stats(str(OUT / f"profile-{spec['mode']}-{label}-{part}.prof"))
        return result

    initial = timed("initial")
    rerun = timed("rerun")
    return {"initial": initial, "rerun": rerun}


def run_worker(spec: dict) -> dict:
    spec_file = OUT / f"spec-{spec['mode']}.json"
    result_file = OUT / f"result-{spec['mode']}.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    log = OUT / f"worker-{spec['mode']}.log"
    with open(log, "w") as out:
        code = subprocess.call(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                str(spec_file),
                "--worker-result",
                str(result_file),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if code != 0 or not result_file.exists():
        raise RuntimeError(f"worker for {spec['mode']} failed (exit {code}); see {log}")
    return json.loads(result_file.read_text())


# ----- orchestration -----------------------------------------------------------------------


def seed(hull_url: str, cio_url: str, users: int) -> dict:
    import requests

    for url in (hull_url, cio_url):
        requests.post(f"{url}/_sim/reset", timeout=60).raise_for_status()
        requests.post(f"{url}/_sim/journal", json={"record": False, "clear": True}, timeout=60).raise_for_status()
    response = requests.post(f"{hull_url}/_sim/seed", json={"n_users": users}, timeout=3600)
    response.raise_for_status()
    return response.json()


def reset_customerio(cio_url: str) -> None:
    """An empty Customer.io for the sync: the floors' people and events are gone."""
    import requests

    requests.post(f"{cio_url}/_sim/reset", timeout=60).raise_for_status()
    requests.post(f"{cio_url}/_sim/journal", json={"record": False, "clear": True}, timeout=60).raise_for_status()


def machine() -> dict:
    cpu_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    import prefect

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_name,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "load_before": os.getloadavg()[0],
    }


def fmt(value, digits=0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def markdown(columns: list[tuple[str, str, int]], rows: list[dict]) -> str:
    """A Markdown table: columns are (header, key, digits)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(key), digits) for _, key, digits in columns) + " |")
    return "\n".join(lines)


USER_COLUMNS = [
    ("N", "n", 0),
    ("mode", "mode", 0),
    ("run", "run", 0),
    ("load", "load", 2),
    ("users read", "read", 0),
    ("seconds", "seconds", 1),
    ("users/s", "users_s", 0),
    ("users phase s", "users_phase_s", 1),
    ("users/s in users phase", "phase_users_s", 0),
    ("Customer.io req/s", "req_s", 0),
    ("Customer.io requests", "requests", 0),
    ("Prefect task runs", "tasks", 0),
    ("pages", "pages", 0),
    ("flow peak RSS MB", "rss", 0),
    ("Hull sim RSS MB", "hull_rss", 0),
    ("CIO sim RSS MB", "cio_rss", 0),
    ("CPU ms per user (all processes)", "cpu_ms", 2),
    ("vs floor", "vs_floor", 0),
]
EVENT_COLUMNS = [
    ("N", "n", 0),
    ("mode", "mode", 0),
    ("run", "run", 0),
    ("load", "load", 2),
    ("events decided", "decided", 0),
    ("sent", "sent", 0),
    ("events phase s", "phase_s", 1),
    ("events/s", "events_s", 0),
    ("users phase s", "users_phase_s", 1),
    ("event tasks", "event_tasks", 0),
    ("events per task", "per_task", 0),
    ("CPU ms per event (all processes)", "cpu_ms", 2),
    ("vs events floor", "vs_floor", 0),
]
WORK = [
    ("JSON decode", "JSON decode"),
    ("JSON encode", "JSON encode"),
    ("JWT", "JWT signing"),
    ("SQL", "SQL (SQLAlchemy + driver)"),
    ("HTTP client", "HTTP client (urllib3, sockets)"),
    ("Prefect engine", "Prefect (flow and task engine)"),
]
CPU_COLUMNS = [
    ("N", "n", 0),
    ("mode", "mode", 0),
    ("run", "run", 0),
    ("load", "load", 2),
    ("wall s", "seconds", 1),
    ("flow process CPU s", "process", 1),
    *[(header, header, 1) for header, _ in WORK],
    ("Prefect threads", "Prefect threads", 1),
    ("rest of the connector", "rest", 1),
    ("Hull sim CPU s", "hull", 1),
    ("CIO sim CPU s", "customerio", 1),
    ("Prefect server CPU s", "prefect_server", 1),
    ("all processes CPU s", "all", 1),
    ("all CPU ÷ 2 cores ÷ wall", "busy", 0),
]


def cpu_row(base: dict, result: dict) -> dict:
    from bench.cpu import is_connector_thread

    use = result["cpu"]
    row = {**base, "seconds": result["seconds"], "process": use["process_cpu_s"], "load": result["load"]}
    threads = use["threads"]
    ours = sum(v for k, v in threads.items() if is_connector_thread(k))
    row["Prefect threads"] = sum(v for k, v in threads.items() if not is_connector_thread(k))
    work = use.get("work")
    if work is not None:
        for header, key in WORK:
            row[header] = work.get(key, 0.0)
        row["rest"] = ours - sum(work.get(key, 0.0) for _, key in WORK)
    processes = use.get("processes", {})
    row.update(
        hull=processes.get("hull"),
        customerio=processes.get("customerio"),
        prefect_server=processes.get("prefect_server"),
    )
    # The physical limit: with every process's CPU on 2 cores, the run cannot take less than
    # all / 2 seconds; "busy" says how much of the machine this benchmark had (the rest went
    # to waiting, or to the other engineers' processes).
    row["all"] = use["process_cpu_s"] + sum(v for v in processes.values() if v is not None)
    row["busy"] = f"{100 * row['all'] / 2 / result['seconds']:.0f}%"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("users", "webhooks", "all"), default="users")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--mode", choices=("v1", "v2_batch", "both"), default="both")
    parser.add_argument("--sims", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--push-concurrency", type=int, default=None, help="default: the connector's default")
    parser.add_argument("--users-per-batch", type=int, default=None, help="default: the connector's default")
    parser.add_argument("--events-per-batch", type=int, default=None, help="default: the connector's default")
    parser.add_argument("--events", action="store_true", help="also sync the seeded events (events_filter)")
    parser.add_argument("--webhooks", type=int, default=10_000, help="webhooks sent per database (webhooks scenario)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="webhooks scenario: sqlite, postgresql")
    parser.add_argument(
        "--hull-latency-ms", type=float, default=0, help="the Hull simulator answers every request this late"
    )
    parser.add_argument(
        "--no-events-read-ahead",
        action="store_true",
        help="read each events batch in its own task (measures EventsReadAhead)",
    )
    parser.add_argument(
        "--cpu-by-kind",
        action="store_true",
        help="account the flow's CPU by kind of work (JSON, JWT, SQL, HTTP, Prefect); "
        "it costs the flow 4-14%% of its throughput, so off by default",
    )
    parser.add_argument(
        "--no-plan-ahead", action="store_true", help="plan each page in its own task (measures PagePlanner)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the runs (no throughput figures)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(json.loads(Path(args.worker).read_text()))
        Path(args.worker_result).write_text(json.dumps(result, default=str))
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    host = machine()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections: list[str] = []
    if args.scenario in ("users", "all"):
        sections.append(users_scenario(args))
    if args.scenario in ("webhooks", "all"):
        from bench.webhooks import webhooks_scenario

        sections.append(webhooks_scenario(args, PrefectServer, Simulator, process_cpu_seconds))
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = "\n\n".join(sections)
    print()
    print(text)
    if not args.no_record:
        command = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
        with open(RESULTS, "a") as out:
            out.write(
                f"\n### {started_at}: `{command}`\n\n"
                f"Machine: {host['nproc']} CPUs ({host['cpu']}), {host['ram_gb']} GB RAM, Python {host['python']}, "
                f"prefect {host['prefect']}; load average before the run {host['load_before']:.2f} "
                f'("load" columns: the 1-minute load average just before each run); bench process peak RSS '
                f"{self_rss:.0f} MB.\n\n{text}\n"
            )
        print(f"\nappended to {RESULTS.relative_to(ROOT)}")
    return 0


def users_scenario(args) -> str:
    import requests

    from cio_sync.settings import ConnectorSettings
    from simulators.env import RemoteCustomerIo, RemoteHull, simulator_environment

    concurrency = args.push_concurrency or ConnectorSettings.model_fields["push_concurrency"].default
    params = {"push_concurrency": concurrency}
    if args.users_per_batch:
        params["users_per_batch"] = args.users_per_batch
    if args.events_per_batch:
        params["events_per_batch"] = args.events_per_batch
    modes = ["v1", "v2_batch"] if args.mode == "both" else [args.mode]
    print(
        f"bench: {args.users:,} users, modes {modes}, simulators {args.sims}, push_concurrency {concurrency}"
        f"{', events' if args.events else ''}{', profiled' if args.profile else ''}",
        flush=True,
    )

    hull = Simulator("hull", args.sims == "inprocess")
    cio = Simulator("customerio", args.sims == "inprocess")
    prefect_server = None
    rows: list[dict] = []
    event_rows: list[dict] = []
    cpu_rows: list[dict] = []
    profiles: list[str] = []
    pending_ratios: list[dict] = []
    pending_event_ratios: list[dict] = []
    try:
        prefect_server = PrefectServer()
        seeded = seed(hull.url, cio.url, args.users)
        print(f"seeded {seeded['users']:,} users, {seeded['events']:,} events in {seeded['seconds']} s", flush=True)
        sample = floor_users(hull.url, min(FLOOR_SAMPLE, args.users))
        calls = identify_calls(sample)
        events = event_calls(hull.url, sample) if args.events else []
        if args.hull_latency_ms:  # every Hull request of the runs waits this long, as over a real network
            requests.post(
                f"{hull.url}/_sim/faults", json={"op": "latency", "seconds": args.hull_latency_ms / 1000}, timeout=60
            ).raise_for_status()
        cio_pid = cio.process.pid if cio.process else None
        floor_rates: dict[str, list[float]] = {"identify": [], "events": []}
        floor_cpu: dict[str, list[float]] = {"identify": [], "events": []}

        def measure_floors(when: str) -> None:
            """Both floors (identify, events), on 1 Session and on `concurrency` threads, into
            an empty Customer.io; their best rates are kept for the ratios."""
            reset_customerio(cio.url)
            for kind, kind_calls, method, table_rows in (
                ("identify", calls, "PUT", rows),
                ("events", events, "POST", event_rows),
            ):
                if not kind_calls:
                    continue
                best = 0.0
                for threads, label in ((1, "1 Session"), (concurrency, f"{concurrency} threads")):
                    load = os.getloadavg()[0]
                    before = os.times()
                    cio_before = process_cpu_seconds(cio_pid)
                    rate = raw_floor(cio.url, kind_calls, threads, method)
                    after = os.times()
                    all_cpu = (after.user - before.user) + (after.system - before.system)
                    if cio_pid is not None:
                        all_cpu += process_cpu_seconds(cio_pid) - cio_before
                    cpu_ms = 1000 * all_cpu / len(kind_calls)
                    floor_cpu[kind].append(cpu_ms)
                    best = max(best, rate)
                    run = f"{label}, {when}"
                    if kind == "identify":
                        table_rows.append(
                            {
                                "n": len(kind_calls),
                                "mode": "raw floor",
                                "run": run,
                                "read": len(kind_calls),
                                "users_s": rate,
                                "req_s": rate,
                                "requests": len(kind_calls),
                                "seconds": len(kind_calls) / rate,
                                "load": load,
                                "cpu_ms": cpu_ms,
                            }
                        )
                    else:
                        table_rows.append(
                            {
                                "n": len(kind_calls),
                                "mode": "events floor",
                                "run": run,
                                "decided": len(kind_calls),
                                "sent": len(kind_calls),
                                "phase_s": len(kind_calls) / rate,
                                "events_s": rate,
                                "load": load,
                                "cpu_ms": cpu_ms,
                            }
                        )
                    print(
                        f"{kind} floor {run}: {rate:,.0f} calls/s, {cpu_ms:.2f} CPU ms per call (client + "
                        f"Customer.io simulator), load {load:.2f}",
                        flush=True,
                    )
                floor_rates[kind].append(best)
            reset_customerio(cio.url)

        measure_floors("before the runs")

        for number, mode in enumerate(modes):
            if number:
                seed(hull.url, cio.url, args.users)  # each mode starts from the same fresh data
            database = OUT / f"state-{mode}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            pids = {
                "hull": hull.process.pid if hull.process else None,
                "customerio": cio.process.pid if cio.process else None,
                "prefect_server": prefect_server.process.pid,
            }
            spec = {
                "mode": mode,
                "events": args.events,
                "params": params,
                "profile": args.profile,
                "no_plan_ahead": args.no_plan_ahead,
                "no_events_read_ahead": args.no_events_read_ahead,
                "cpu": args.cpu_by_kind,
                "pids": pids,
                "env": {
                    "PREFECT_API_URL": prefect_server.url,
                    "PREFECT_HOME": prefect_server.home,
                    "PREFECT_LOGGING_LEVEL": "WARNING",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    **simulator_environment(
                        RemoteHull(hull.url, "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET),
                        RemoteCustomerIo(cio.url, CIO_SITE_ID, CIO_API_KEY),
                        f"sqlite:///{database}",
                        SYNC_LEASE_TTL_SECONDS=3600,
                    ),
                },
            }
            with Ticker(hull.url, cio.url):
                result = run_worker(spec)
            for run in ("initial", "rerun"):
                r = result[run]
                s = r["summary"]
                base = {"n": args.users, "mode": mode, "run": run}
                row = {
                    **base,
                    "seconds": r["seconds"],
                    "read": s["users_seen"],
                    "load": r["load"],
                    "users_s": s["users_seen"] / r["seconds"],
                    "req_s": r["cio_requests"] / r["seconds"],
                    "requests": r["cio_requests"],
                    "tasks": prefect_server.count_task_runs(r["flow_run_id"]),
                    "pages": s["pages"],
                    "rss": r["rss_mb"],
                    "hull_rss": hull.peak_rss_mb(),
                    "cio_rss": cio.peak_rss_mb(),
                    "summary": s,
                }
                phase = r["phases"].get("users")
                if phase:
                    row["users_phase_s"] = phase
                    row["phase_users_s"] = s["users_seen"] / phase
                if not args.profile:
                    cpu_rows.append(cpu_row(base, r))
                    users_cpu = cpu_rows[-1]["all"] - r["cpu"]["phase_events_all_cpu"]
                    row["cpu_ms"] = 1000 * users_cpu / s["users_seen"] if s["users_seen"] else None
                if run == "initial" and mode == "v1":
                    whole = r["seconds"] - r["phases"].get("events", 0.0)
                    row["whole"] = whole
                    pending_ratios.append(row)
                if args.profile:
                    row["vs_floor"] = "profiled: not a throughput figure"
                rows.append(row)
                if args.events:
                    decided = sum(s["events"].values()) + sum(s["event_skip_reasons"].values())
                    phase = r["phases"].get("events")
                    event_row = {
                        **base,
                        "load": r["load"],
                        "decided": decided,
                        "sent": s["events"].get("sent", 0),
                        "phase_s": phase,
                        "users_phase_s": r["phases"].get("users"),
                        "event_tasks": r["task_calls"]["events"],
                        "events_s": decided / phase if phase else None,
                        "per_task": decided / r["task_calls"]["events"] if r["task_calls"]["events"] else None,
                    }
                    if "events_all_cpu" in r["cpu"] and decided:
                        event_row["cpu_ms"] = 1000 * r["cpu"]["events_all_cpu"] / decided
                    if run == "initial" and mode == "v1" and phase and not args.profile:
                        pending_event_ratios.append(event_row)
                    event_rows.append(event_row)
                if "profile" in r:
                    profiles.append(
                        profile_section(
                            f"{mode} {run}, {args.users:,} users{' with events' if args.events else ''}", r["profile"]
                        )
                    )
                print(
                    f"{mode} {run}: {r['seconds']:.1f} s, {row['users_s']:,.0f} users/s, "
                    f"{r['cio_requests']:,} Customer.io requests, {row['tasks']} task runs, "
                    f"decisions {s['decisions']}, events {s['events']}, failed {s['failed_users']}, "
                    f"users seen {s['users_seen']:,}, phases {r['phases']}, "
                    f"thread CPU { ({k: round(v, 2) for k, v in r['cpu']['threads'].items()}) }",
                    flush=True,
                )
        if not args.profile:
            measure_floors("after the runs")
            # The rerun reads and decides only: its ceiling is what the source can serve.
            load = os.getloadavg()[0]
            hull_before = process_cpu_seconds(hull.process.pid if hull.process else None)
            read, seconds = source_ceiling(hull.url, args.users_per_batch or 500)
            hull_after = process_cpu_seconds(hull.process.pid if hull.process else None)
            ceiling = read / seconds
            rows.append(
                {
                    "n": args.users,
                    "mode": "source ceiling",
                    "run": "bare keyset walk of Hull, after the runs",
                    "load": load,
                    "read": read,
                    "seconds": seconds,
                    "users_s": ceiling,
                    "hull_rss": hull.peak_rss_mb(),
                    "vs_floor": f"Hull sim CPU {hull_after - hull_before:.1f} s" if hull_before is not None else None,
                }
            )
            print(f"source ceiling: {ceiling:,.0f} users/s (bare keyset walk, {read:,} users), load {load:.2f}")
            for row in rows:
                if row.get("run") == "rerun" and row.get("users_s"):
                    row["vs_floor"] = f"{100 * row['users_s'] / ceiling:.0f}% of the source ceiling"
        # Ratios against the mean of the best floors measured before and after the runs (the
        # machine's load moves in between); the CPU ratio does not depend on the load.
        best_floor = sum(floor_rates["identify"]) / len(floor_rates["identify"])
        for row in pending_ratios:
            if args.profile:
                break
            row["vs_floor"] = (
                f"{100 * row['read'] / row['whole'] / best_floor:.0f}% users/s, "
                f"{100 * row.get('phase_users_s', 0) / best_floor:.0f}% in users phase"
            )
            if row.get("cpu_ms"):
                floor_ms = sum(floor_cpu["identify"]) / len(floor_cpu["identify"])
                row["vs_floor"] += f", {100 * floor_ms / row['cpu_ms']:.0f}% by CPU per user"
        if floor_rates["events"]:
            best_events_floor = sum(floor_rates["events"]) / len(floor_rates["events"])
            for event_row in pending_event_ratios:
                event_row["vs_floor"] = (
                    f"{100 * event_row['sent'] / event_row['phase_s'] / best_events_floor:.0f}% sent/s"
                )
                if event_row.get("cpu_ms"):
                    floor_ms = sum(floor_cpu["events"]) / len(floor_cpu["events"])
                    event_row["vs_floor"] += f", {100 * floor_ms / event_row['cpu_ms']:.0f}% by CPU per event"
    finally:
        if prefect_server is not None:
            prefect_server.stop()
        hull.stop()
        cio.stop()

    parts = [
        f"Users: `--users {args.users} --mode {args.mode}{' --events' if args.events else ''}`, "
        f"simulators {args.sims}, push_concurrency {concurrency}"
        f"{'; pages planned in their own task (--no-plan-ahead)' if args.no_plan_ahead else ''}"
        f"{'; events batches read in their own task (--no-events-read-ahead)' if args.no_events_read_ahead else ''}"
        f"{f'; the Hull simulator answers every request {args.hull_latency_ms:g} ms late' if args.hull_latency_ms else ''}.",
        markdown(USER_COLUMNS, rows),
    ]
    if event_rows:
        parts += [
            "Events (phase = the events phase's own wall time, after the users phase of the same run; "
            "decided = sent + skipped + failed):",
            markdown(EVENT_COLUMNS, event_rows),
        ]
    if cpu_rows:
        parts += [
            "CPU seconds of the flow process (by kind of work with `--cpu-by-kind`: bench/cpu.py, exclusive), and of the other "
            "processes, during each run:",
            markdown(CPU_COLUMNS, cpu_rows),
        ]
    parts += profiles
    return "\n\n".join(parts)


def profile_section(title: str, profile: dict) -> str:
    from bench.cpu import profile_table

    text = f"Profile, {title}: main thread, top by cumulative time\n\n{profile_table(profile['main'])}"
    if profile.get("main_own"):
        text += f"\n\nMain thread, top by own time\n\n{profile_table(profile['main_own'])}"
    if profile.get("threads"):
        text += (
            f"\n\nPool threads (senders, write-back, prefetch), top by own time\n\n{profile_table(profile['threads'])}"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
