"""A database lease so that two runs of the same job never overlap, even when a second run
is started by hand, from another machine, or outside Prefect's deployment concurrency limit.

A lease expires on its own (`ttl`), so a run killed with SIGKILL blocks the next one for
at most `ttl`; a live run renews it once per page.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from cio_sync.store.db import as_utc, leases, utcnow

DEFAULT_TTL = timedelta(minutes=10)


class LeaseHeld(Exception):
    def __init__(self, name: str, holder: str, expires_at: datetime):
        self.holder = holder
        super().__init__(
            f"another run ({holder}) holds the {name!r} lease until {expires_at.isoformat(timespec='seconds')}; "
            "this run did nothing. If that run was killed, its lease expires by itself at that time."
        )


class Lease:
    def __init__(self, engine: Engine, name: str, holder: str, ttl: timedelta = DEFAULT_TTL):
        self.engine, self.name, self.holder, self.ttl = engine, name, holder, ttl

    def acquire(self) -> None:
        now = utcnow()
        expires = now + self.ttl
        with self.engine.begin() as connection:
            taken = connection.execute(
                update(leases)
                .where(leases.c.name == self.name)
                .where((leases.c.expires_at < now) | (leases.c.holder == self.holder))
                .values(holder=self.holder, expires_at=expires)
            ).rowcount
        if taken:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(leases).values(name=self.name, holder=self.holder, expires_at=expires))
            return
        except IntegrityError:
            pass
        with self.engine.connect() as connection:
            row = connection.execute(select(leases).where(leases.c.name == self.name)).first()
        if row is None:  # released between our attempts: try once more
            return self.acquire()
        raise LeaseHeld(self.name, row.holder, as_utc(row.expires_at) or utcnow())

    def renew(self) -> None:
        """Extends the lease; raises LeaseHeld if it was lost (expired and taken by another run)."""
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(leases)
                .where(leases.c.name == self.name)
                .where(leases.c.holder == self.holder)
                .values(expires_at=utcnow() + self.ttl)
            ).rowcount
        if not renewed:
            self.acquire()

    def release(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(leases).where(leases.c.name == self.name).where(leases.c.holder == self.holder))

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
