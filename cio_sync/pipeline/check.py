"""The status check of the original connector: settings, credentials, segments."""

from __future__ import annotations

from dataclasses import dataclass

from cio_sync.rules.mapping import resolve_segments
from cio_sync.settings import ConnectorSettings, CustomerIoCredentials, HullCredentials, SettingsError
from connectors.customerio import CustomerIoClient
from connectors.http import ApiError, AuthError, RetryPolicy
from connectors.hull import HullClient

QUICK = RetryPolicy(total=1, timeout=10)


@dataclass
class Finding:
    level: str  # ok | warning | error
    message: str


def check_connection(settings: ConnectorSettings | None = None) -> list[Finding]:
    settings = settings or ConnectorSettings()
    try:
        hull_credentials, cio_credentials = HullCredentials(), CustomerIoCredentials()
    except SettingsError as exc:  # names the variable, never its value
        return [Finding("error", str(exc))]
    findings: list[Finding] = []
    if cio_credentials.missing():
        findings.append(
            Finding(
                "error",
                f"Please enter your Customer.io Site ID and API Key (missing: {', '.join(cio_credentials.missing())}).",
            )
        )
    else:
        with CustomerIoClient.from_settings(cio_credentials, retry=QUICK) as cio:
            try:
                region = cio.check_credentials()
                findings.append(
                    Finding("ok", f"Customer.io credentials accepted (region {region.get('region', '?')}).")
                )
                if (
                    region.get("region")
                    and region["region"] != cio_credentials.region
                    and not cio_credentials.track_url
                ):
                    findings.append(
                        Finding(
                            "warning",
                            f"The workspace is in region {region['region']!r} but "
                            f"CUSTOMERIO_REGION is {cio_credentials.region!r}.",
                        )
                    )
            except AuthError:
                findings.append(
                    Finding(
                        "error",
                        "Invalid Credentials: Verify Site ID and API Key in Settings "
                        "(CUSTOMERIO_SITE_ID, CUSTOMERIO_API_KEY, CUSTOMERIO_REGION).",
                    )
                )
            except ApiError as exc:
                findings.append(Finding("error", f"Error when trying to connect with Customer.io: {exc}"))

    if hull_credentials.missing():
        findings.append(Finding("error", f"Missing Hull settings: {', '.join(hull_credentials.missing())}."))
    else:
        with HullClient.from_settings(hull_credentials, retry=QUICK) as hull:
            try:
                segments = hull.segments()
                findings.append(Finding("ok", f"Hull credentials accepted ({len(segments)} segments)."))
                _, unknown = resolve_segments(settings.synchronized_segments, segments)
                for entry in unknown:
                    # With deletion on, sync-users refuses to run (its users would all be deleted).
                    level = "error" if settings.enable_user_deletion else "warning"
                    findings.append(Finding(level, f"Synchronized segment {entry!r} does not exist in Hull."))
            except AuthError as exc:
                findings.append(Finding("error", f"Hull rejected the credentials: {exc}"))
            except ApiError as exc:
                findings.append(Finding("error", f"Error when trying to connect with Hull: {exc}"))

    if not settings.synchronized_segments:
        findings.append(
            Finding(
                "warning",
                "No users will be synchronized because you have not specified at "
                "least one whitelisted segment in Settings (SYNCHRONIZED_SEGMENTS).",
            )
        )
    return findings


def markdown(findings: list[Finding]) -> str:
    icon = {"ok": "✅", "warning": "⚠️", "error": "❌"}
    return "# Connection check\n\n" + "\n".join(f"- {icon[f.level]} {f.message}" for f in findings) + "\n"
