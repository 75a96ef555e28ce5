"""Settings a sync run used, for flows that must agree with it (the drain's `user_id_mapping`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from cio_sync.store.db import settings_in_use, upsert, utcnow


def record_setting(engine: Engine, name: str, value: Any, flow_run_id: str | None) -> None:
    with engine.begin() as connection:
        upsert(
            connection,
            settings_in_use,
            [{"name": name, "value": value, "flow_run_id": flow_run_id, "updated_at": utcnow()}],
            "name",
        )


def setting_in_use(engine: Engine, name: str) -> Any:
    """The value the latest sync run recorded, or None."""
    with engine.connect() as connection:
        return connection.execute(select(settings_in_use.c.value).where(settings_in_use.c.name == name)).scalar()
