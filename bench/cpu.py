"""Where a benchmark process spends its CPU: per thread group, per kind of work, and profiles.

Bench only; nothing here is imported by the connector.

- `ThreadCpu`: CPU seconds of every thread of this process over a measured span, grouped by
  thread name (`MainThread`, `cio-send`, `hull-writeback`, `hull-prefetch`, Prefect's own
  threads...). Exact (the kernel's per-thread run time), and free: it reads
  `/proc/self/task/*/schedstat` and records each thread's CPU when it ends.
- `CpuAccount`: exclusive thread-CPU seconds spent inside chosen functions, by kind of work
  (JSON encode/decode, JWT signing, SQL, HTTP client, Prefect's flow and task engine), measured
  with `time.thread_time()` around each call (about a microsecond per call: a few per user).
  "Exclusive": JSON encoded inside an SQL statement counts as SQL, the connector's own code
  called by a Prefect task counts as the connector's, not Prefect's.
- `Profiler`: cProfile of the main thread and of every thread started while it runs (the sender
  pools, the write-back and prefetch threads), summarised as the top functions by cumulative
  time. cProfile slows call-heavy code two to three times: profiled runs are separate from the
  timed runs and their throughput is not reported.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# ----- threads ---------------------------------------------------------------------------------

_ended: list[tuple[int, str, float]] = []  # (native id, name, thread CPU seconds at its end)
_thread_hooks: list[Callable[[threading.Thread], Callable[[], None] | None]] = []
_patched = False


def patch_threads() -> None:
    """Wraps `threading.Thread.run` (once) so that every thread started afterwards records its
    CPU when it ends and runs the hooks registered by `Profiler`."""
    global _patched
    if _patched:
        return
    _patched = True
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        finishers = [f for f in (hook(self) for hook in list(_thread_hooks)) if f is not None]
        try:
            original(self)
        finally:
            for finish in finishers:
                finish()
            _ended.append((threading.get_native_id(), self.name, time.thread_time()))

    threading.Thread.run = run  # type: ignore[method-assign]


CONNECTOR_THREADS = ("MainThread", "cio-", "hull-")


def is_connector_thread(name: str) -> bool:
    """The flow's own thread and the pools it starts (senders, write-back, prefetch)."""
    return name.startswith(CONNECTOR_THREADS)


def thread_group(name: str) -> str:
    """`cio-send_3` → `cio-send`, `ThreadPoolExecutor-2_0` → `ThreadPoolExecutor`."""
    return re.sub(r"(-\d+)?(_\d+)?$", "", name) or name


def _live_threads() -> dict[int, tuple[str, float]]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    result = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        tid = int(task.name)
        result[tid] = (names.get(tid, f"native-{tid}"), ns / 1e9)
    return result


class ThreadCpu:
    """CPU seconds per thread group between `start()` and `stop()`."""

    def start(self) -> ThreadCpu:
        patch_threads()
        self._before = _live_threads()
        self._ended_mark = len(_ended)
        self._rusage = os.times()
        return self

    def stop(self) -> dict[str, Any]:
        after = _live_threads()
        groups: dict[str, float] = defaultdict(float)
        for tid, (name, cpu) in after.items():
            groups[thread_group(name)] += cpu - self._before.get(tid, (name, 0.0))[1]
        for tid, name, cpu in _ended[self._ended_mark :]:
            if tid not in after:
                groups[thread_group(name)] += cpu - self._before.get(tid, (name, 0.0))[1]
        times = os.times()
        process = (times.user - self._rusage.user) + (times.system - self._rusage.system)
        return {"process_cpu_s": process, "threads": dict(sorted(groups.items(), key=lambda kv: -kv[1]))}


# ----- kinds of work ---------------------------------------------------------------------------


class CpuAccount:
    """Exclusive thread-CPU seconds per category, from wrappers around chosen functions."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._installed: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attribute: str, category: str, opaque: bool = False) -> None:
        """Counts calls of `owner.attribute` as `category`. `opaque`: wrapped functions called
        inside it count as `category` too (JSON inside JWT signing is JWT work)."""
        original = getattr(owner, attribute)
        local, totals, calls, lock = self._local, self.totals, self.calls, self._lock
        clock = time.thread_time

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(local, "stack", None)
            if stack is None:
                # Only the connector's threads are accounted; Prefect's own threads (API
                # client, events, logs) are counted whole by `ThreadCpu`.
                stack = local.stack = [] if is_connector_thread(threading.current_thread().name) else [("", 0.0, True)]
            if stack and stack[-1][2]:
                return original(*args, **kwargs)
            frame = [category, 0.0, opaque]
            stack.append(frame)
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = clock() - started
                stack.pop()
                if stack:
                    stack[-1][1] += elapsed
                with lock:
                    totals[category] += elapsed - frame[1]
                    calls[category] += 1

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        for name in ("__name__", "__qualname__", "__doc__", "__module__"):
            try:
                setattr(wrapper, name, getattr(original, name))
            except (AttributeError, TypeError):
                pass
        setattr(owner, attribute, wrapper)
        self._installed.append((owner, attribute, original))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.totals)

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if after.get(k, 0.0) - before.get(k, 0.0) > 0}


def install_flow_accounting(account: CpuAccount) -> None:
    """The categories of the sync and drain flows. Call before the flows run (after importing
    them): module attributes are replaced, so callers that look them up at call time see the
    wrappers."""
    import json

    import orjson
    from prefect.flows import Flow
    from prefect.tasks import Task
    from sqlalchemy.engine import Connection, Engine

    import connectors.hull as hull
    import connectors.transport as transport
    import flows.sync_users as sync_users_flow
    import tasks.drain_webhook_batch as drain_task
    import tasks.sync_events_page as events_task
    import tasks.sync_users_page as users_task

    # Prefect's engine, exclusive of the connector code its flows and tasks run.
    account.wrap(Flow, "__call__", "Prefect (flow and task engine)")
    account.wrap(Task, "__call__", "Prefect (flow and task engine)")
    account.wrap(sync_users_flow, "_run", "connector code (mapping, diff, hashing, ...)")
    account.wrap(users_task, "sync_page", "connector code (mapping, diff, hashing, ...)")
    account.wrap(events_task, "run_events_page", "connector code (mapping, diff, hashing, ...)")
    account.wrap(drain_task, "drain_batch", "connector code (mapping, diff, hashing, ...)")
    # The work itself.
    account.wrap(json, "loads", "JSON decode")
    account.wrap(orjson, "loads", "JSON decode")
    account.wrap(json, "dumps", "JSON encode")
    account.wrap(orjson, "dumps", "JSON encode")
    account.wrap(hull.TokenSigner, "sign", "JWT signing", opaque=True)
    for name in ("execute", "exec_driver_sql", "_commit_impl", "_rollback_impl", "_begin_impl", "close"):
        account.wrap(Connection, name, "SQL (SQLAlchemy + driver)", opaque=True)
    account.wrap(Engine, "connect", "SQL (SQLAlchemy + driver)", opaque=True)
    account.wrap(transport.Transport, "send", "HTTP client (urllib3, sockets)")


# ----- profiles --------------------------------------------------------------------------------


class Profiler:
    """cProfile of the calling thread and of every thread started between `start` and `stop`."""

    def __init__(self) -> None:
        self._main = cProfile.Profile()
        self._threads: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._active = False

    def _hook(self, thread: threading.Thread) -> Callable[[], None] | None:
        if not self._active:
            return None
        profile = cProfile.Profile()
        profile.enable()

        def finish() -> None:
            profile.disable()
            with self._lock:
                self._threads.append(profile)

        return finish

    def start(self) -> Profiler:
        patch_threads()
        self._active = True
        _thread_hooks.append(self._hook)
        self._main.enable()
        return self

    def stop(self) -> tuple[pstats.Stats | None, pstats.Stats | None]:
        self._main.disable()
        self._active = False
        _thread_hooks.remove(self._hook)
        main = pstats.Stats(self._main)
        with self._lock:
            threads = None
            for profile in self._threads:
                if threads is None:
                    threads = pstats.Stats(profile)
                else:
                    threads.add(profile)
        return main, threads


def short_name(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    path = filename
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib" + path[path.find("/") :]
            break
    else:
        try:
            path = str(Path(filename).resolve().relative_to(ROOT))
        except ValueError:
            path = Path(filename).name
    return f"{path}:{line}({function})"


SKIP = re.compile(r"cProfile|profile\b|bench/cpu\.py|\{built-in method builtins\.exec\}|<string>:1\(<module>\)")
# Where idle threads wait (a pool worker waiting for work, Prefect's heartbeat): not work.
IDLE = re.compile(
    r"time\.sleep|SimpleQueue|acquire' of '_thread|select\.(e?poll|select)|threading\.py:\d+\(wait\)"
    r"|threading\.py:\d+\(_bootstrap|concurrent/futures/thread\.py:\d+\(_worker\)|bench/cpu\.py"
)


def top(stats: pstats.Stats | None, limit: int = 15, sort: str = "cumulative") -> list[dict[str, Any]]:
    """Top functions as rows: calls, own seconds, cumulative seconds, function."""
    if stats is None:
        return []
    rows = []
    for key, (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = short_name(key)
        if SKIP.search(name) or SKIP.search(key[0]) or (sort != "cumulative" and IDLE.search(name)):
            continue
        rows.append({"calls": nc, "tottime": tt, "cumtime": ct, "function": name})
    rows.sort(key=lambda r: -(r["cumtime"] if sort == "cumulative" else r["tottime"]))
    return rows[:limit]


def profile_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| calls | own s | cumulative s | function |", "|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['calls']:,} | {r['tottime']:.2f} | {r['cumtime']:.2f} | `{r['function']}` |")
    return "\n".join(lines)
