"""The `check-connection` flow: the original connector's status check on a schedule.

Checks the credentials of both services and the settings (missing segments and the like)
and publishes the result as a markdown artifact, so the latest status is one click away
in the Prefect UI. A finding of level `error` fails the run, so a broken credential shows
as a red run (and can drive a Prefect automation) instead of hiding in an artifact.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cio_sync.pipeline import check
from cio_sync.redact import scrub
from cio_sync.secrets import load_secret_blocks
from cio_sync.settings import ConnectorSettings

ARTIFACT_KEY = "check-connection"


class ConnectionCheckFailed(Exception):
    """At least one finding is an error; the message lists them."""


@flow(name="check-connection", log_prints=False)
def check_connection(synchronized_segments: list[str] | None = None) -> list[dict[str, Any]]:
    """Checks Hull and Customer.io credentials and the connector settings.

    `synchronized_segments` falls back to the SYNCHRONIZED_SEGMENTS environment variable,
    like the sync's own parameter. Credentials come only from the environment (or Prefect
    Secret blocks, see cio_sync/secrets.py), never from parameters.
    """
    logger = get_run_logger()
    loaded = load_secret_blocks()
    if loaded:
        logger.info("credentials loaded from Prefect Secret blocks: %s", ", ".join(loaded))
    settings = ConnectorSettings.resolve(synchronized_segments=synchronized_segments)
    findings = check.check_connection(settings)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=scrub(check.markdown(findings)),
        description="Credentials and settings of the Hull → Customer.io connector.",
    )
    log = {"ok": logger.info, "warning": logger.warning, "error": logger.error}
    for finding in findings:
        log[finding.level]("%s", finding.message)
    errors = [finding.message for finding in findings if finding.level == "error"]
    if errors:
        raise ConnectionCheckFailed(scrub(" ".join(errors)))
    return [asdict(finding) for finding in findings]
