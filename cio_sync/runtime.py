"""Everything one run needs, built once from the environment and the flow's parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from cio_sync import db
from cio_sync.secrets import load_secret_blocks
from cio_sync.settings import (
    ConnectorSettings,
    CustomerIoCredentials,
    HullCredentials,
    RetrySettings,
    StateSettings,
    require,
)
from connectors.customerio import CustomerIoClient
from connectors.hull import HullClient
from connectors.ratelimit import make_rate_limiter


@dataclass
class SyncRuntime:
    settings: ConnectorSettings
    hull: HullClient
    customerio: CustomerIoClient
    engine: Engine
    database_url: str
    segment_names: dict[str, str] = field(default_factory=dict)
    whitelisted_segment_ids: set[str] = field(default_factory=set)
    dry_run: bool = False
    lease: Any = None  # cio_sync.lease.Lease held by this run, renewed once per page
    # tasks.writeback.WriteBackPipeline while the user walk sends write-backs in the background.
    write_backs: Any = None

    def renew_lease(self) -> None:
        if self.lease is not None:
            self.lease.renew()

    def close(self) -> None:
        self.hull.close()
        self.customerio.close()


def build_runtime(settings: ConnectorSettings, dry_run: bool = False) -> SyncRuntime:
    """Fails before any call, naming every missing setting."""
    load_secret_blocks()  # only for variables the environment lacks
    hull_credentials = HullCredentials()
    cio_credentials = CustomerIoCredentials()
    require(hull_credentials.missing(), cio_credentials.missing())
    database_url = StateSettings().state_database_url
    retry = RetrySettings().policy()
    return SyncRuntime(
        settings=settings,
        hull=HullClient.from_settings(hull_credentials, retry=retry),
        customerio=CustomerIoClient.from_settings(
            cio_credentials,
            retry=retry,
            rate_limiter=make_rate_limiter(settings.rate_limit_per_second),
            pool_size=max(4, settings.push_concurrency),
        ),
        engine=db.get_engine(database_url),
        database_url=database_url,
        dry_run=dry_run,
    )
