"""Configuration: credentials and endpoints from the environment, connector settings
from flow parameters with the environment as fallback.

Credentials are `SecretStr` so that a settings object printed in a log, a traceback or
an artifact shows `**********` instead of the secret. They are checked when loaded:
surrounding whitespace (a trailing newline of a mounted secret file, a pasted space) is
removed; a control character inside a value, or a character outside ASCII in a value sent
as an HTTP header, is an error naming the variable (never the value). Every secret loaded is
registered with the scrubber (cio_sync/redact.py).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cio_sync import redact

if TYPE_CHECKING:
    from connectors.http import RetryPolicy

# Defaults that code outside the settings classes also needs (one value each).
DEFAULT_WEBHOOK_TOLERANCE_SECONDS = 300
DEFAULT_WEBHOOK_CLAIM_TIMEOUT_SECONDS = 600
DEFAULT_WEBHOOK_DRAIN_CONCURRENCY = 4

DEFAULT_DATA_DIR = Path("data")
# Consecutive pages of users that send nothing (all unchanged or skipped) are recorded by one
# `sync-users-quiet-pages` task of up to this many pages, not one task each: a Prefect task run
# costs its server ~40 ms of CPU, more than a page of 500 unchanged users costs the connector.
QUIET_PAGES_PER_TASK = 20
US_TRACK_URL = "https://track.customer.io"
EU_TRACK_URL = "https://track-eu.customer.io"
DEFAULT_FIREHOSE_URL = "https://firehose.hullapp.io"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names variables, never values."""


class MissingSettingsError(SettingsError):
    """Raised before any call is made when required settings are absent."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(
            "Missing settings: "
            + ", ".join(names)
            + ". Set them as environment variables (or in a .env file) and run again."
        )


class InvalidCredentialError(SettingsError):
    """A credential or endpoint variable holds something no HTTP request can carry."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__(
            "; ".join(f"{name} {problem}" for name, problem in problems.items())
            + ". Fix the variable (or the Prefect Secret block it comes from) and run again."
        )


def _env_config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore")


def credential_problem(value: str, header: bool) -> str | None:
    """Why `value` (already stripped) cannot be used, in words that never quote it."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "contains a control character (a line break, tab or similar) inside the value"
    if header and not value.isascii():
        return "contains a character outside ASCII, which an HTTP header cannot carry"
    return None


class _Credentials(BaseSettings):
    """Strips every credential field when loaded and checks it outside pydantic's validation
    (whose errors would quote the input); registers the secrets with the scrubber."""

    _prefix = ""
    _header_fields: frozenset[str] = frozenset()  # values sent in HTTP headers
    _secret_fields: frozenset[str] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value.strip() if isinstance(value, str) else value

    def __init__(self, **values: Any):
        super().__init__(**values)
        problems: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str):
                problem = credential_problem(text, header=name in self._header_fields)
                if problem:
                    problems[f"{self._prefix}{name}".upper()] = problem
        # Registered even when another field is invalid: the scrubber must know them first.
        redact.register(*(self._secret(name) for name in self._secret_fields))
        if problems:
            raise InvalidCredentialError(problems)

    def _secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value


class HullCredentials(_Credentials):
    model_config = _env_config("HULL_")
    _prefix = "HULL_"
    _header_fields = frozenset({"organization", "connector_id", "connector_secret"})
    _secret_fields = frozenset({"connector_secret"})

    organization: str | None = None
    api_url: str | None = None
    firehose_url: str = DEFAULT_FIREHOSE_URL
    connector_id: str | None = None
    connector_secret: SecretStr | None = None

    @property
    def base_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        return f"https://{self.organization}/api/v1"

    def missing(self) -> list[str]:
        missing = []
        if not self.organization and not self.api_url:
            missing.append("HULL_ORGANIZATION")
        if not self.connector_id:
            missing.append("HULL_CONNECTOR_ID")
        if not self.connector_secret or not self.connector_secret.get_secret_value():
            missing.append("HULL_CONNECTOR_SECRET")
        return missing


class CustomerIoCredentials(_Credentials):
    model_config = _env_config("CUSTOMERIO_")
    _prefix = "CUSTOMERIO_"
    _header_fields = frozenset({"site_id", "api_key"})
    _secret_fields = frozenset({"api_key", "webhook_signing_key"})

    site_id: str | None = None
    api_key: SecretStr | None = None
    region: Literal["us", "eu"] = "us"
    track_url: str | None = None
    webhook_signing_key: SecretStr | None = None

    def __init__(self, **values: Any):
        super().__init__(**values)
        redact.register_basic_auth(self.site_id, self._secret("api_key"))

    @field_validator("region", mode="before")
    @classmethod
    def _lower_region(cls, value: Any) -> Any:
        return value.lower().strip() if isinstance(value, str) else value

    @property
    def base_url(self) -> str:
        if self.track_url:
            return self.track_url.rstrip("/")
        return EU_TRACK_URL if self.region == "eu" else US_TRACK_URL

    def missing(self) -> list[str]:
        missing = []
        if not self.site_id:
            missing.append("CUSTOMERIO_SITE_ID")
        if not self.api_key or not self.api_key.get_secret_value():
            missing.append("CUSTOMERIO_API_KEY")
        return missing


class StateSettings(BaseSettings):
    model_config = _env_config()

    state_database_url: str = Field(default_factory=lambda: f"sqlite:///{(DEFAULT_DATA_DIR / 'state.db').as_posix()}")


class ConnectorSettings(BaseSettings):
    """The original connector's settings, kept under their names.

    Each is also a flow parameter; an explicit parameter wins over the environment
    variable of the same name in upper case (lists as JSON).
    """

    model_config = _env_config()

    synchronized_segments: list[str] = Field(default_factory=list)
    synchronized_attributes: list[str] = Field(default_factory=list)
    user_id_mapping: str = "external_id"
    enable_user_deletion: bool = False
    events_filter: list[str] = Field(default_factory=list)
    anonymous_events: bool = False
    max_attributes_per_call: int = Field(default=30, ge=1, le=300)
    max_attribute_name_length: int = Field(default=150, ge=1)
    max_attribute_value_length: int = Field(default=1000, ge=1)
    max_identifier_value_length: int = Field(default=150, ge=1)
    # Operational knobs (not in the original connector).
    # Customer.io documents up to 1,000 requests/s per workspace ("not strictly enforced");
    # 100/s is the conservative default. 0 disables the limiter.
    rate_limit_per_second: float = Field(default=100.0, ge=0)
    push_concurrency: int = Field(default=4, ge=1, le=64)
    users_per_batch: int = Field(default=500, ge=1, le=10_000)
    # Events per `sync-events-page` task: read as Hull searches of at most 100 each.
    events_per_batch: int = Field(default=500, ge=1, le=10_000)
    # v1: one Track API call per identify chunk/delete/event; v2_batch: `POST /api/v2/batch`
    # requests packed by bytes (tasks/load_v2.py).
    customerio_api: Literal["v1", "v2_batch"] = "v1"
    # Watermarks and healing (README, "When things fail"; cio_sync/pipeline/watermarks.py).
    # Every run re-reads this much of the events stream before its cursor: a late event
    # (created_at set by the sender, indexed later) inside the window is sent once.
    events_overlap_minutes: float = Field(default=60, ge=0)
    # When events are first enabled, `events_start` is set to that moment minus this, and the
    # scheduled flow never sends an older event (older history: `cio-sync backfill-events`).
    events_initial_lookback_hours: float = Field(default=24, ge=0)
    # An event dated more than this after the run's start is skipped as `future_timestamp`.
    events_future_tolerance_minutes: float = Field(default=60, ge=0)
    # Every run re-reads this much of the users stream before its cursor (unchanged users cost no call).
    users_overlap_seconds: float = Field(default=60, ge=0)
    # Transient failed batches are retried at the start of scheduled runs at most this many times.
    failed_batch_auto_retries: int = Field(default=5, ge=0)
    # Identity (cio_sync/rules/plan.py). When a user's mapped id changes: merge the old person
    # into the new one, delete the old one, or leave it (the original connector's behaviour).
    on_id_change: Literal["merge", "delete_old", "ignore"] = "merge"
    # Attributes Customer.io accepted before and no longer sent are sent as "" (removed).
    unset_removed_attributes: bool = True
    # update_only: identify with `_update: true` and never add a person to Customer.io.
    sync_mode: Literal["upsert", "update_only"] = "upsert"
    # What happens to a person whose user left every synchronized segment. None: from
    # `enable_user_deletion` (true → delete, false → keep), which stays as an alias.
    on_segment_exit: Literal["keep", "delete", "suppress", "unset_segments"] | None = None

    @model_validator(mode="after")
    def _segment_exit_alias(self) -> ConnectorSettings:
        # One source of truth after validation: `on_segment_exit` wins when set, and
        # `enable_user_deletion` always says whether people are deleted.
        if self.on_segment_exit is None:
            self.on_segment_exit = "delete" if self.enable_user_deletion else "keep"
        self.enable_user_deletion = self.on_segment_exit == "delete"
        return self

    @property
    def segment_exit(self) -> str:
        return self.on_segment_exit or ("delete" if self.enable_user_deletion else "keep")

    # Deletion guard (cio_sync/rules/guard.py): a run that would delete more people than this
    # deletes nobody until approved. None: the larger of 100 and 5% of the people state tracks.
    max_deletions_per_run: int | None = Field(default=None, ge=0)
    # Sync log (`cio-sync explain`): the values of changed attributes are logged (and shown in a
    # dry run's plan) only when this is on: they are personal data. Off: names and digests only.
    sync_log_values: bool = False
    # Sync log rows older than this are deleted by the runs themselves (in bounded deletes).
    sync_log_retention_days: float = Field(default=30, gt=0)

    def snapshot(self) -> dict[str, Any]:
        """Every setting as JSON values (none is a secret), to compare with a later run's."""
        return self.model_dump(mode="json")

    @classmethod
    def resolve(cls, **overrides: Any) -> ConnectorSettings:
        """Build settings from explicit values (flow parameters) over the environment.
        Names that are not settings (other flow parameters) are ignored, so a flow can pass
        all of its parameters."""
        values = {k: v for k, v in overrides.items() if v is not None and k in cls.model_fields}
        if "enable_user_deletion" in values and "on_segment_exit" not in values:
            # The alias given as a parameter beats an ON_SEGMENT_EXIT left in the environment.
            values["on_segment_exit"] = "delete" if values["enable_user_deletion"] else "keep"
        return cls(**values)


class ApprovalSettings(BaseSettings):
    """How long a deployment run waits, paused, for its deletion plan to be approved in the
    Prefect UI before it fails (deleting nobody). Environment only."""

    model_config = _env_config("DELETION_")

    approval_timeout_seconds: int = Field(default=3600, ge=10)
    # How often the paused run asks the Prefect server whether the form was submitted.
    approval_poll_seconds: int = Field(default=10, ge=1)


class OperationsSettings(BaseSettings):
    """Guards of the state commands and thresholds of the Prefect alerts (`cio-sync setup
    --notify-block`). Environment only."""

    model_config = _env_config()

    # `cio-sync resync` asking for more people than this prints the list and needs `--yes`.
    max_resync_without_approval: int = Field(default=1000, ge=0)
    # The `sync-users` schedule (prefect.yaml: `interval: 300`); an alert fires when no run
    # completed within `alert_missed_sync_intervals` of them.
    sync_users_interval_seconds: float = Field(default=300, gt=0)
    alert_missed_sync_intervals: int = Field(default=3, ge=1)
    # The oldest pending webhook older than this fires an alert (from the drain's event).
    alert_webhook_backlog_minutes: float = Field(default=10, gt=0)
    # A failed batch open longer than this fires an alert (from the sync run's event).
    alert_failed_batch_hours: float = Field(default=24, gt=0)


class LeaseSettings(BaseSettings):
    """The users-writer lease (cio_sync/store/lease.py). Environment only.

    A live run renews its lease every `lease_heartbeat_seconds` from a background thread; a
    lease not renewed for `lease_ttl_seconds` has expired and may be taken over.
    """

    model_config = _env_config("SYNC_")

    lease_ttl_seconds: float = Field(default=60.0, gt=0)
    lease_heartbeat_seconds: float = Field(default=15.0, gt=0)

    @property
    def heartbeat_seconds(self) -> float:
        """The renewal interval, at most a third of the TTL so that one missed beat loses nothing."""
        return min(self.lease_heartbeat_seconds, self.lease_ttl_seconds / 3)


class WebhookSettings(BaseSettings):
    """Environment variables of the webhook intake and drain (none is a secret).

    The signing key is not here: it is a Customer.io credential and lives in
    `CustomerIoCredentials.webhook_signing_key` (`CUSTOMERIO_WEBHOOK_SIGNING_KEY`).
    """

    model_config = _env_config()

    # How far X-CIO-Timestamp may be from our clock; bounds how long a captured request
    # can be replayed.
    webhook_timestamp_tolerance_seconds: int = Field(default=DEFAULT_WEBHOOK_TOLERANCE_SECONDS, ge=1)
    # Retries of a row whose delivery to Hull fails transiently (Hull down, 5xx, timeouts):
    # after a failure, a row that had n failed attempts before waits
    # min(WEBHOOK_RETRY_MAX_SECONDS, WEBHOOK_RETRY_BASE_SECONDS * 2**n) before a drain
    # claims it again: 30 s, 1 min, 2 min, ... 32 min, then hourly.
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    # A row is marked failed once it has been failing for this long, counted from its first
    # transient failure (a row that waited for a drain is never given up untried). 0 fails
    # a row at its first transient failure.
    webhook_retry_hours: float = Field(default=24.0, ge=0)
    # Optional extra bound, unset by default: when set, a row is also marked failed after
    # this many transient failures, whichever of the two comes first. Kept for operators
    # who prefer a count; the time window above is what protects rows through an outage.
    webhook_max_attempts: int | None = Field(default=None, ge=1)
    # A row claimed by a drain that died is claimable again after this long.
    webhook_claim_timeout_seconds: int = Field(default=DEFAULT_WEBHOOK_CLAIM_TIMEOUT_SECONDS, ge=1)
    # Firehose POSTs (50 webhooks each) a drain batch keeps in flight at once. The first POST
    # of a batch, and every POST after a transient failure, goes alone, so a Hull outage costs
    # the same failed POSTs as one at a time (cio_sync/pipeline/drain.py).
    webhook_drain_concurrency: int = Field(default=DEFAULT_WEBHOOK_DRAIN_CONCURRENCY, ge=1)


def require(*missing_lists: list[str]) -> None:
    names = [name for names in missing_lists for name in names]
    if names:
        raise MissingSettingsError(names)


class RetrySettings(BaseSettings):
    """How hard the HTTP clients retry transient failures (429, 5xx, timeouts, resets)
    before the work is recorded as a failed batch. Environment only."""

    model_config = _env_config("HTTP_")

    retries: int = Field(default=5, ge=0, le=20)
    backoff_seconds: float = Field(default=0.5, ge=0)  # doubles per retry, plus jitter
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    timeout_seconds: float = Field(default=10.0, gt=0)

    def policy(self) -> RetryPolicy:
        from connectors.http import RetryPolicy

        return RetryPolicy(
            total=self.retries,
            backoff_factor=self.backoff_seconds,
            backoff_max=self.backoff_max_seconds,
            backoff_jitter=self.backoff_seconds / 2,
            timeout=self.timeout_seconds,
        )
