"""Hull client: segments, user and event search (paged), and the firehose (writes).

Everything Hull-specific lives here so another source could replace it later.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import jwt

from connectors.http import ApiClient, RetryPolicy

if TYPE_CHECKING:
    from cio_sync.settings import HullCredentials

MAX_PER_PAGE = 100
RESULT_WINDOW = 10_000  # Elasticsearch's page x per_page limit
FIREHOSE_BATCH_SIZE = 50


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_token(connector_id: str, secret: str, claims: dict[str, Any], hull_id: str | None = None,
               create: bool = True) -> str:
    """A user-scoped HS256 JWT for one firehose message."""
    payload: dict[str, Any] = {
        "iss": connector_id,
        "iat": int(time.time()),
        "io.hull.asUser": claims,
        "io.hull.subjectType": "user",
    }
    if hull_id:
        payload["sub"] = hull_id
    if not create:
        payload["io.hull.create"] = False
    return jwt.encode(payload, secret, algorithm="HS256")


def normalize_event(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept both the connector form (`event_id`, `properties`) and the raw index form
    (`_id`, `props: [{field_name, text_value, ...}]`)."""
    event = dict(raw)
    if "event_id" not in event and "_id" in event:
        event["event_id"] = event["_id"]
    if "properties" not in event and isinstance(event.get("props"), list):
        properties = {}
        for prop in event["props"]:
            name = prop.get("field_name")
            if not name:
                continue
            for key in ("text_value", "num_value", "bool_value", "date_value"):
                if prop.get(key) is not None:
                    properties[name] = prop[key]
                    break
            else:
                properties[name] = None
        event["properties"] = properties
    event.setdefault("properties", {})
    event.setdefault("context", {})
    return event


class HullClient(ApiClient):
    service = "Hull"
    auth_hint = "Check HULL_CONNECTOR_ID and HULL_CONNECTOR_SECRET (and HULL_ORGANIZATION)."
    credential_headers = frozenset({"Hull-Access-Token", "Hull-App-Id", "Hull-Organization"})

    def __init__(
        self,
        base_url: str,
        firehose_url: str,
        organization: str,
        connector_id: str,
        connector_secret: str,
        *,
        retry: RetryPolicy | None = None,
    ):
        super().__init__(base_url, retry=retry)
        self.firehose_url = firehose_url.rstrip("/") + "/"
        self.connector_id = connector_id
        self._secret = connector_secret
        self.session.headers.update(
            {
                "Hull-App-Id": connector_id,
                "Hull-Access-Token": connector_secret,
                "Hull-Organization": organization or "",
                "Content-Type": "application/json",
            }
        )

    @classmethod
    def from_settings(cls, credentials: HullCredentials, retry: RetryPolicy | None = None) -> HullClient:
        organization = credentials.organization or ""
        return cls(
            credentials.base_url,
            credentials.firehose_url,
            organization,
            credentials.connector_id or "",
            credentials.connector_secret.get_secret_value() if credentials.connector_secret else "",
            retry=retry,
        )

    # ----- reads -------------------------------------------------------------------
    def segments(self) -> list[dict[str, Any]]:
        segments, page, per_page = [], 1, 200
        while True:
            batch = self.request("GET", f"/users_segments?page={page}&per_page={per_page}").json()
            segments.extend(batch)
            if len(batch) < per_page:
                return segments
            page += 1

    def _search(self, path: str, sort_field: str, order: str, filters: list[dict[str, Any]], page: int, per_page: int,
                must_not: list[dict[str, Any]] | None) -> dict[str, Any]:
        query: dict[str, Any] = {"filter": filters}
        if must_not:
            query["must_not"] = must_not
        body = {"query": {"bool": query}, "sort": {sort_field: order}, "raw": True, "page": page, "per_page": per_page}
        result: dict[str, Any] = self.request("POST", path, json_body=body).json()
        return result

    def _by_ids(self, search: Callable[..., dict[str, Any]], field: str, ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), MAX_PER_PAGE):
            found.extend(search([{"terms": {field: ids[start : start + MAX_PER_PAGE]}}], 1, MAX_PER_PAGE)["data"])
        return found

    def search_users(
        self, filters: list[dict[str, Any]], page: int, per_page: int = MAX_PER_PAGE, must_not: list[dict[str, Any]] | None = None,
        order: str = "asc",
    ) -> dict[str, Any]:
        return self._search("/search/user_reports", "indexed_at", order, filters, page, per_page, must_not)

    def users_by_ids(self, hull_ids: list[str]) -> list[dict[str, Any]]:
        return self._by_ids(self.search_users, "id", hull_ids)

    def search_events(
        self, filters: list[dict[str, Any]], page: int, per_page: int = MAX_PER_PAGE, must_not: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        result = self._search("/search/events", "created_at", "asc", filters, page, per_page, must_not)
        result["data"] = [normalize_event(e) for e in result.get("data", [])]
        return result

    def events_by_ids(self, hull_event_ids: list[str]) -> list[dict[str, Any]]:
        return self._by_ids(self.search_events, "event_id", hull_event_ids)

    # ----- writes ------------------------------------------------------------------
    def token(self, claims: dict[str, Any], hull_id: str | None = None, create: bool = True) -> str:
        return user_token(self.connector_id, self._secret, claims, hull_id, create)

    def traits_message(self, claims: dict[str, Any], traits: dict[str, Any], hull_id: str | None = None) -> dict[str, Any]:
        now = iso(datetime.now(timezone.utc))
        return {
            "type": "traits",
            "requestId": str(uuid.uuid4()),
            "headers": {"Hull-Access-Token": self.token(claims, hull_id, create=False)},
            "body": traits,
            "timestamp": now,
        }

    def track_message(self, claims: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "track",
            "requestId": str(uuid.uuid4()),
            "headers": {"Hull-Access-Token": self.token(claims)},
            "body": event,
            "timestamp": iso(datetime.now(timezone.utc)),
        }

    def firehose(self, messages: list[dict[str, Any]]) -> None:
        """Sends messages in POSTs of at most 50, as Hull's own client did."""
        for start in range(0, len(messages), FIREHOSE_BATCH_SIZE):
            now = iso(datetime.now(timezone.utc))
            body = {"batch": messages[start : start + FIREHOSE_BATCH_SIZE], "timestamp": now, "sentAt": now}
            self.request("POST", "(firehose)", json_body=body, url=self.firehose_url)
