"""Everything one run needs, built once from the environment and the flow's parameters.

`SyncRuntime` is frozen: what it holds does not depend on which function ran before. The
segments Hull knows are resolved once per run (`with_segments` returns a new runtime); the
lease and the background write-back pipeline belong to the flow, which passes them to the
code that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlalchemy import Engine

from cio_sync.secrets import load_secret_blocks
from cio_sync.settings import (
    ConnectorSettings,
    CustomerIoCredentials,
    HullCredentials,
    RetrySettings,
    StateSettings,
    require,
)
from cio_sync.store import db
from connectors.customerio import CustomerIoClient
from connectors.global_rate_limit import GlobalRateLimiter
from connectors.hull import HullClient
from connectors.ratelimit import LocalLimiter, make_rate_limiter


@dataclass(frozen=True)
class Segments:
    """Hull's segments as this run resolved them."""

    names: dict[str, str] = field(default_factory=dict)  # id -> name, for `hull_segments`
    whitelisted_ids: frozenset[str] = frozenset()  # ids of `synchronized_segments`
    unknown: tuple[str, ...] = ()  # entries of `synchronized_segments` Hull does not have


@dataclass(frozen=True)
class SyncRuntime:
    settings: ConnectorSettings
    hull: HullClient
    customerio: CustomerIoClient
    engine: Engine
    database_url: str
    segments: Segments = Segments()
    dry_run: bool = False

    @property
    def segment_names(self) -> dict[str, str]:
        return self.segments.names

    @property
    def whitelisted_segment_ids(self) -> frozenset[str]:
        return self.segments.whitelisted_ids

    def with_segments(self, segments: Segments) -> SyncRuntime:
        return replace(self, segments=segments)

    def close(self) -> None:
        self.hull.close()
        self.customerio.close()


def build_runtime(settings: ConnectorSettings, dry_run: bool = False, global_rate_limit: bool = False) -> SyncRuntime:
    """Fails before any call, naming every missing setting.

    `global_rate_limit`: besides the in-process limit, take Customer.io request slots from the
    Prefect global limit shared by every run, shard and worker (connectors/global_rate_limit.py).
    """
    load_secret_blocks()  # only for variables the environment lacks
    hull_credentials = HullCredentials()
    cio_credentials = CustomerIoCredentials()
    require(hull_credentials.missing(), cio_credentials.missing())
    database_url = StateSettings().state_database_url
    retry = RetrySettings().policy()
    limiter: LocalLimiter | None = make_rate_limiter(settings.rate_limit_per_second)
    if global_rate_limit:
        limiter = GlobalRateLimiter.in_front_of(limiter, settings.rate_limit_per_second)
    return SyncRuntime(
        settings=settings,
        hull=HullClient.from_settings(hull_credentials, retry=retry),
        customerio=CustomerIoClient.from_settings(
            cio_credentials,
            retry=retry,
            rate_limiter=limiter,
            pool_size=max(4, settings.push_concurrency),
        ),
        engine=db.get_engine(database_url),
        database_url=database_url,
        dry_run=dry_run,
    )
