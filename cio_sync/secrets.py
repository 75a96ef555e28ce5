"""Credentials from Prefect Secret blocks, for workers whose environment does not hold them.

The environment always wins: a variable that is set is never looked up. For each one that
is missing, the Secret block of the matching name is read from the Prefect API and put in
this process's environment, where the settings classes (cio_sync/settings.py) read it.
A flow-run process of a worker or of `serve` lives for one run, so nothing outlives it.

Create the blocks once per workspace (or in the UI: Blocks > Secret):

    python -c 'from prefect.blocks.system import Secret; Secret(value="...").save("hull-connector-secret")'
    python -c 'from prefect.blocks.system import Secret; Secret(value="...").save("customerio-api-key")'

Call `load_secret_blocks()` at the start of a flow, before any settings are read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, MutableMapping

logger = logging.getLogger(__name__)

# Environment variable -> Prefect Secret block name.
SECRET_BLOCKS = {
    "HULL_CONNECTOR_SECRET": "hull-connector-secret",
    "CUSTOMERIO_API_KEY": "customerio-api-key",
}


def load_secret_blocks(
    environ: MutableMapping[str, str] | None = None, names: Collection[str] | None = None
) -> list[str]:
    """Fills each missing variable of SECRET_BLOCKS (or of those in `names`: a flow that needs
    only some asks for no other block) from its Secret block, when the block exists. Returns
    the names of the variables filled (never their values)."""
    environ = os.environ if environ is None else environ
    missing = {
        env: block for env, block in SECRET_BLOCKS.items() if not environ.get(env) and (names is None or env in names)
    }
    if not missing:
        return []  # the usual case: no Prefect call at all
    from prefect.blocks.system import Secret

    loaded: list[str] = []
    for env_name, block_name in missing.items():
        try:
            secret = Secret.load(block_name)
        except ValueError:  # no such block: the settings check will name the variable
            logger.debug("no Prefect Secret block %r for %s", block_name, env_name)
            continue
        value = secret.get()  # type: ignore[union-attr]  # sync context: a value, not a coroutine
        if value:
            environ[env_name] = str(value)
            loaded.append(env_name)
    return loaded
