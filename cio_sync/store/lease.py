"""Database leases: no two runs write the same users at once, whoever started them (a
schedule, a person, another machine), and a crashed run never blocks the next one.

A lease is a row in `leases`: a name, the holder (a label plus host, pid, process start time
and Prefect flow run id when known) and an expiry. Names can conflict without being equal
(`conflicts`: the users writers use `cio_sync.rules.sharding.scopes_overlap`), so taking a
lease checks every row in one serialised transaction (`pg_advisory_xact_lock` on PostgreSQL,
`BEGIN IMMEDIATE` on SQLite).

A conflicting holder is taken over at once when
- its lease has expired (not renewed for `ttl`), or
- it ran on this host (same hostname and PID namespace) and its process is gone (no such
  pid, a zombie, or a pid reused by a process that started later), or
- its Prefect flow run is known and has ended (`holder_gone`, e.g. Crashed, Failed,
  Cancelled or Completed; the probe is given by the caller: this module has no Prefect).
Otherwise `LeaseHeld` names the holder.

While a run lives, `Heartbeat` renews its lease every few seconds from a background thread,
whatever the run is doing (a long page, the events phase). A lease found taken by another
holder at a renewal is lost: `check()` raises `LeaseLost`, which the flows call between pages.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, select, update

from cio_sync.store.db import as_utc, is_postgres, leases, upsert, utcnow

DEFAULT_TTL = timedelta(seconds=60)
LEASE_LOCK_ID = 0x63696F6C  # "ciol": any constant shared by every process of this project
PROBED_STATES = "Crashed, Failed, Cancelled or Completed"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parens
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _host_identity() -> str:
    """The hostname plus the PID namespace: containers sharing a hostname but not a PID space
    must never judge each other's pids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()[:255]


def process_alive(pid: int, process_start: str | None = None) -> bool:
    """Whether the process `pid` (started at `process_start`, when known) still runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):  # killed, not yet reaped: gone for our purposes
        return False
    return process_start is None or started == process_start


@dataclass(frozen=True)
class Holder:
    """Who holds a lease. `label` is what people read (and must be unique per run)."""

    label: str
    host: str | None = None
    pid: int | None = None
    process_start: str | None = None
    flow_run_id: str | None = None

    @classmethod
    def this_process(cls, what: str, flow_run_id: str | None = None) -> Holder:
        pid = os.getpid()
        stat = _proc_stat(pid)
        run = f" flow run {flow_run_id}" if flow_run_id else ""
        label = f"{what} on {socket.gethostname()[:40]} pid {pid}{run}"
        return cls(label[:128], _host_identity(), pid, stat[1] if stat else None, flow_run_id)


@dataclass(frozen=True)
class LeaseRow:
    name: str
    holder: str
    expires_at: datetime
    host: str | None
    pid: int | None
    process_start: str | None
    flow_run_id: str | None
    acquired_at: datetime | None
    renewed_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> LeaseRow:
        return cls(
            row.name,
            row.holder,
            as_utc(row.expires_at) or utcnow(),
            row.host,
            row.pid,
            row.process_start,
            row.flow_run_id,
            as_utc(row.acquired_at),
            as_utc(row.renewed_at),
        )

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at < (now or utcnow())

    def process_gone(self) -> bool:
        """The holder ran on this host and its process is gone."""
        return (
            self.host is not None
            and self.pid is not None
            and self.host == _host_identity()
            and not process_alive(self.pid, self.process_start)
        )


class LeaseHeld(Exception):
    def __init__(self, name: str, row: LeaseRow):
        self.holder = row.holder
        self.row = row
        where = f"the lease {row.name!r}" if row.name == name else f"the lease {row.name!r}, which covers {name!r},"
        super().__init__(
            f"another run ({row.holder}) holds {where} until {row.expires_at.isoformat(timespec='seconds')}; "
            "this run did nothing. A killed run is taken over at once when it ran on this machine, or when its "
            f"Prefect flow run is {PROBED_STATES}; otherwise its lease expires by itself at that time "
            f"(`cio-sync lease release {row.name}` releases it by hand)."
        )


class LeaseLost(Exception):
    """The lease was taken over by another run (it had expired): this run must stop writing."""


class Lease:
    def __init__(
        self,
        engine: Engine,
        name: str,
        holder: Holder | str,
        ttl: timedelta = DEFAULT_TTL,
        *,
        conflicts: Callable[[str, str], bool] | None = None,
        holder_gone: Callable[[str], bool] | None = None,
    ):
        self.engine, self.name, self.ttl = engine, name, ttl
        self.holder = holder if isinstance(holder, Holder) else Holder(holder)
        self.conflicts = conflicts or (lambda a, b: a == b)
        self.holder_gone = holder_gone  # flow run id -> whether that run has ended
        self.lost: LeaseLost | None = None
        self._heartbeat: Heartbeat | None = None

    # -- taking and giving back --------------------------------------------------------------

    def acquire(self) -> None:
        """Takes the lease or raises LeaseHeld naming the holder that keeps it."""
        # The liveness probes (a /proc read, maybe a Prefect API call) run before the lock;
        # the locked transaction re-reads the rows and removes only those judged gone.
        gone = {(row.name, row.holder) for row in self._conflicting(self._rows()) if self._gone(row)}
        with self._locked() as connection:
            now = utcnow()
            for row in self._conflicting([LeaseRow.of(r) for r in connection.execute(select(leases))]):
                if row.expired(now) or (row.name, row.holder) in gone:
                    connection.execute(
                        delete(leases).where(and_(leases.c.name == row.name, leases.c.holder == row.holder))
                    )
                else:
                    raise LeaseHeld(self.name, row)
            holder = self.holder
            upsert(
                connection,
                leases,
                [
                    {
                        "name": self.name,
                        "holder": holder.label,
                        "expires_at": now + self.ttl,
                        "host": holder.host,
                        "pid": holder.pid,
                        "process_start": holder.process_start,
                        "flow_run_id": holder.flow_run_id,
                        "acquired_at": now,
                        "renewed_at": now,
                    }
                ],
                "name",
            )
        self.lost = None

    def renew(self) -> None:
        """Extends the lease; raises LeaseLost when another holder has taken it."""
        now = utcnow()
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(leases)
                .where(leases.c.name == self.name)
                .where(leases.c.holder == self.holder.label)
                .values(expires_at=now + self.ttl, renewed_at=now)
            ).rowcount
        if not renewed:
            raise LeaseLost(
                f"the lease {self.name!r} of {self.holder.label} was taken over by another run after it expired; "
                "this run stopped writing"
            )

    def release(self) -> None:
        self.stop_heartbeat()
        with self.engine.begin() as connection:
            connection.execute(
                delete(leases).where(leases.c.name == self.name).where(leases.c.holder == self.holder.label)
            )

    def check(self) -> None:
        """Raises LeaseLost if the heartbeat found the lease taken by another run."""
        if self.lost is not None:
            raise self.lost

    # -- heartbeat ---------------------------------------------------------------------------

    def start_heartbeat(self, interval: float) -> None:
        self.stop_heartbeat()
        self._heartbeat = Heartbeat(self, interval)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------

    def _rows(self) -> list[LeaseRow]:
        with self.engine.connect() as connection:
            return [LeaseRow.of(r) for r in connection.execute(select(leases))]

    def _conflicting(self, rows: list[LeaseRow]) -> list[LeaseRow]:
        return [
            r
            for r in rows
            if self.conflicts(self.name, r.name) and not (r.name == self.name and r.holder == self.holder.label)
        ]

    def _gone(self, row: LeaseRow) -> bool:
        if row.process_gone():
            return True
        if row.flow_run_id and self.holder_gone is not None:
            try:
                return self.holder_gone(row.flow_run_id)
            except Exception:
                return False  # no answer: the holder may be alive
        return False

    def _locked(self) -> _LockedTransaction:
        return _LockedTransaction(self.engine)


class _LockedTransaction:
    """One transaction that no other lease change runs beside."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self) -> Connection:
        self._context = self.engine.begin()
        connection = self._context.__enter__()
        if is_postgres(self.engine):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LEASE_LOCK_ID})")
        elif self.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return connection

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)


class Heartbeat(threading.Thread):
    """Renews a lease every `interval` seconds until stopped. A database that does not answer
    is tried again at the next beat; once the lease is taken by another run (or could not be
    renewed for a whole TTL), the lease is marked lost and the thread ends."""

    def __init__(self, lease: Lease, interval: float):
        super().__init__(name=f"lease-heartbeat-{lease.name}", daemon=True)
        self.lease, self.interval = lease, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        last_renewal = utcnow()
        while not self._stopped.wait(self.interval):
            try:
                self.lease.renew()
                last_renewal = utcnow()
            except LeaseLost as exc:
                self.lease.lost = exc
                return
            except Exception as exc:  # the database did not answer: try again next beat
                if utcnow() - last_renewal > self.lease.ttl:
                    self.lease.lost = LeaseLost(
                        f"the lease {self.lease.name!r} could not be renewed for longer "
                        f"than its TTL ({exc}); this run stopped writing"
                    )
                    return

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(timeout=10)


def list_leases(engine: Engine) -> list[LeaseRow]:
    with engine.connect() as connection:
        return [LeaseRow.of(r) for r in connection.execute(select(leases).order_by(leases.c.name))]


def force_release(engine: Engine, name: str) -> LeaseRow | None:
    """Deletes the lease `name` whoever holds it (for people: `cio-sync lease release`)."""
    with engine.begin() as connection:
        row = connection.execute(select(leases).where(leases.c.name == name)).first()
        if row is None:
            return None
        connection.execute(delete(leases).where(leases.c.name == name))
    return LeaseRow.of(row)
