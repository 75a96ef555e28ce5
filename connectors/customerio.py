"""Customer.io Track API client (v1). Knows endpoints and auth; no business rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from connectors.http import JSON_HEADERS, ApiClient, RetryPolicy
from connectors.ratelimit import LocalLimiter
from connectors.transport import Response, basic_auth

if TYPE_CHECKING:
    from cio_sync.settings import CustomerIoCredentials


def customer_path(identifier: str) -> str:
    # Ids may hold '/', '@', spaces or non-ASCII: every byte outside the unreserved set is encoded.
    return f"/api/v1/customers/{quote(str(identifier), safe='')}"


class CustomerIoClient(ApiClient):
    service = "Customer.io"
    auth_hint = "Check CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY (and CUSTOMERIO_REGION)."

    def __init__(
        self,
        base_url: str,
        site_id: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        rate_limiter: LocalLimiter | None = None,
        pool_size: int = 16,
    ):
        super().__init__(
            base_url,
            headers={"Authorization": basic_auth(site_id, api_key)},
            retry=retry,
            rate_limiter=rate_limiter,
            pool_size=pool_size,
        )

    @classmethod
    def from_settings(
        cls,
        credentials: CustomerIoCredentials,
        *,
        rate_limiter: LocalLimiter | None = None,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
    ) -> CustomerIoClient:
        return cls(
            credentials.base_url,
            credentials.site_id or "",
            credentials.api_key.get_secret_value() if credentials.api_key else "",
            retry=retry,
            rate_limiter=rate_limiter,
            pool_size=pool_size,
        )

    def check_credentials(self) -> dict[str, Any]:
        """`GET /api/v1/accounts/region`: validates credentials and tells the workspace's region."""
        region: dict[str, Any] = self.request("GET", "/api/v1/accounts/region").json()
        return region

    def identify(self, identifier: str, attributes: dict[str, Any]) -> None:
        self.request("PUT", customer_path(identifier), json_body=attributes)

    def delete(self, identifier: str) -> None:
        self.request("DELETE", customer_path(identifier))

    def suppress(self, identifier: str) -> None:
        """Deletes the person and blocks the identifier from being added again."""
        self.request("POST", customer_path(identifier) + "/suppress")

    def unsuppress(self, identifier: str) -> None:
        """Makes a suppressed identifier usable again (it does not recreate the person)."""
        self.request("POST", customer_path(identifier) + "/unsuppress")

    def merge(self, primary: dict[str, str], secondary: dict[str, str]) -> None:
        """`POST /api/v1/merge_customers`: `secondary` is merged into `primary` (which must
        exist) and deleted. Each is `{"id"|"email"|"cio_id": value}`."""
        self.request("POST", "/api/v1/merge_customers", json_body={"primary": primary, "secondary": secondary})

    def track(self, identifier: str, event: dict[str, Any]) -> None:
        self.request("POST", customer_path(identifier) + "/events", json_body=event)

    def track_anonymous(self, event: dict[str, Any]) -> None:
        self.request("POST", "/api/v1/events", json_body=event)

    def batch(self, entries: list[dict[str, Any]]) -> Response:
        """`POST /api/v2/batch`; returns the response (200, or 207 with per-entry errors)."""
        return self.request("POST", "/api/v2/batch", json_body={"batch": entries})

    def request_batch(self, body: bytes) -> Response:
        """`POST /api/v2/batch` with a body serialised by the caller, so that the bytes checked
        against the 500 KB limit are exactly the bytes sent."""
        return self.request("POST", "/api/v2/batch", data=body, headers=JSON_HEADERS)
