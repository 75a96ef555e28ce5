"""One identity setting: the drain writes webhooks into Hull under the `user_id_mapping` the
sync sends people to Customer.io as.

Both flows resolve the setting the same way (flow parameter, else USER_ID_MAPPING, else
`external_id`), and every sync run records the value it used in the state database. The drain
uses the recorded value when it was given none itself; when it was given one that differs, it
refuses (its rows stay pending) instead of writing events under the wrong identity.
"""

from __future__ import annotations

from sqlalchemy import Engine

from cio_sync.settings import ConnectorSettings
from cio_sync.store.settings_in_use import setting_in_use


class IdentityMismatch(Exception):
    """The drain was given a `user_id_mapping` other than the one the sync uses."""


def drain_settings(engine: Engine, user_id_mapping: str | None) -> ConnectorSettings:
    settings = ConnectorSettings.resolve(user_id_mapping=user_id_mapping)
    recorded = setting_in_use(engine, "user_id_mapping")
    if not recorded or recorded == settings.user_id_mapping:
        return settings
    if "user_id_mapping" not in settings.model_fields_set:  # neither a parameter nor the environment
        return settings.model_copy(update={"user_id_mapping": recorded})
    source = "the user_id_mapping parameter" if user_id_mapping else "USER_ID_MAPPING"
    raise IdentityMismatch(
        f"drain-webhooks was given user_id_mapping {settings.user_id_mapping!r} ({source}) but sync-users sends "
        f"people as {recorded!r}: no webhook was sent, so none reaches Hull under the wrong identity. Set the "
        "same user_id_mapping for both (or none on the drain, which then follows the sync)."
    )
