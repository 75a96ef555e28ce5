"""Everything one run needs, built once from the environment and the flow's parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from cio_sync import db
from cio_sync.settings import (
    ConnectorSettings,
    CustomerIoCredentials,
    HullCredentials,
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

    def close(self) -> None:
        self.hull.close()
        self.customerio.close()


def build_runtime(settings: ConnectorSettings, dry_run: bool = False) -> SyncRuntime:
    """Fails before any call, naming every missing setting."""
    hull_credentials = HullCredentials()
    cio_credentials = CustomerIoCredentials()
    require(hull_credentials.missing(), cio_credentials.missing())
    database_url = StateSettings().state_database_url
    return SyncRuntime(
        settings=settings,
        hull=HullClient.from_settings(hull_credentials),
        customerio=CustomerIoClient.from_settings(
            cio_credentials,
            rate_limiter=make_rate_limiter(settings.rate_limit_per_second),
            pool_size=max(4, settings.push_concurrency),
        ),
        engine=db.get_engine(database_url),
        database_url=database_url,
        dry_run=dry_run,
    )
