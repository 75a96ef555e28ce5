"""The environment variables that point the connector at the simulators.

One place for the block that tests, the demo, the benchmark and the deployment test
each used to write by hand::

    env = simulator_environment(hull, cio, "sqlite:///state.db", RATE_LIMIT_PER_SECOND=0)

``hull`` and ``cio`` are simulator objects, or, for a simulator running in another
process, anything with the same attributes (``RemoteHull`` / ``RemoteCustomerIo``):
credentials always come from the object, never from constants next to the call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from .hull import DEFAULT_CONNECTOR_ID


class HullLike(Protocol):
    url: str
    organization: str
    connector_id: str
    connector_secret: str


class CustomerIoLike(Protocol):
    url: str
    site_id: str
    api_key: str


class RemoteHull(NamedTuple):
    """A Hull simulator in another process (``python -m simulators hull ...``)."""

    url: str
    organization: str = "acme.hullapp.io"
    connector_id: str = DEFAULT_CONNECTOR_ID
    connector_secret: str = "secret"


class RemoteCustomerIo(NamedTuple):
    """A Customer.io simulator in another process (``python -m simulators customerio ...``)."""

    url: str
    site_id: str = "site"
    api_key: str = "key"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def simulator_environment(
    hull: HullLike, cio: CustomerIoLike, database_url: str, overrides: Mapping[str, Any] | None = None, **more: Any
) -> dict[str, str]:
    """``HULL_*``, ``CUSTOMERIO_*`` and ``STATE_DATABASE_URL`` for these simulators.

    Extra variables come from ``overrides`` and keyword arguments (keywords win), e.g.
    ``SYNCHRONIZED_SEGMENTS=["VIP"]``; they may also replace a computed value. Values
    become strings: booleans ``true``/``false``, lists/tuples/dicts JSON, the rest
    ``str()``; ``None`` leaves the variable out. Nothing is written to ``os.environ``:
    the caller does that (``os.environ.update``, ``monkeypatch.setenv``, a subprocess
    ``env=``).
    """
    values: dict[str, Any] = {
        "HULL_ORGANIZATION": hull.organization,
        "HULL_API_URL": f"{hull.url}/api/v1",
        "HULL_FIREHOSE_URL": f"{hull.url}/firehose",
        "HULL_CONNECTOR_ID": hull.connector_id,
        "HULL_CONNECTOR_SECRET": hull.connector_secret,
        "CUSTOMERIO_SITE_ID": cio.site_id,
        "CUSTOMERIO_API_KEY": cio.api_key,
        "CUSTOMERIO_TRACK_URL": cio.url,
        "STATE_DATABASE_URL": database_url,
    }
    values.update(overrides or {})
    values.update(more)
    return {key: _env_value(value) for key, value in values.items() if value is not None}
