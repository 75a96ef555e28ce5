"""Hull client: segments, user and event search (paged), and the firehose (writes).

Everything Hull-specific lives here so another source could replace it later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from connectors.http import ApiClient, RetryPolicy

if TYPE_CHECKING:
    from cio_sync.settings import HullCredentials

MAX_PER_PAGE = 100
RESULT_WINDOW = 10_000  # Elasticsearch's page x per_page limit
FIREHOSE_BATCH_SIZE = 50


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON: orjson (several times faster), or the standard library for what
    orjson refuses (integers beyond 64 bits, non-string keys); both parse back the same."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


# A run of 19 digits may be an integer beyond 64 bits, which orjson would turn into a float.
# Found by mapping every digit to "0" and everything else to " ": two C loops, ~0.15 ms for
# a page of 100 users, where a regular expression takes several milliseconds.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    if type(value) is str:
        return _LONE_SURROGATE.sub("\ufffd", value)
    if type(value) is list:
        return [_without_lone_surrogates(v) for v in value]
    if type(value) is dict:
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def loads(content: bytes) -> Any:
    """A JSON response body, parsed exactly as the standard library parses it: by orjson
    (several times faster) unless the body holds what orjson reads differently (a run of 19
    digits: an integer beyond 64 bits becomes a float there) or refuses (NaN, Infinity, lone
    surrogates), which the standard library parses instead. A lone UTF-16 surrogate (`"\\ud800"`
    with no partner) becomes U+FFFD, as any UTF-8 decoder does: no UTF-8 text (a hash, a state
    row, a Customer.io request) can hold it, and one such trait stopped every run at its page."""
    if _LONG_DIGIT_RUN not in content.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    parsed = json.loads(content)
    if b"\\ud" in content.lower():
        parsed = _without_lone_surrogates(parsed)
    return parsed


def request_id() -> str:
    """A random UUID (version 4) for a firehose message. Not `uuid4()`: its `os.urandom` is a
    system call per message, one GIL hand-off per user written back; an id only needs to be
    unique, not secret (the generator is reseeded in every forked process)."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# PyJWT's header for HS256, serialised as PyJWT does (sorted keys, compact).
_JWT_SIGNING_PREFIX = _b64(b'{"alg":"HS256","typ":"JWT"}') + b"."


class TokenSigner:
    """HS256 JWTs signed with `hmac` over a precomputed header and key: the token PyJWT's
    `jwt.encode(payload, secret, algorithm="HS256")` makes (byte for byte when the claims are
    ASCII; with non-ASCII claims the payload holds raw UTF-8 instead of \\u escapes, which
    decodes to the same claims), about ten times cheaper. One per secret; thread-safe."""

    def __init__(self, secret: str):
        self._mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)

    def sign(self, payload: dict[str, Any]) -> str:
        signing_input = _JWT_SIGNING_PREFIX + _b64(dumps(payload))
        mac = self._mac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + _b64(mac.digest())).decode("ascii")


def token_claims(
    connector_id: str, claims: dict[str, Any], hull_id: str | None = None, create: bool = True
) -> dict[str, Any]:
    """The JWT payload of a user-scoped firehose message."""
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
    return payload


def user_token(
    connector_id: str, secret: str, claims: dict[str, Any], hull_id: str | None = None, create: bool = True
) -> str:
    """A user-scoped HS256 JWT for one firehose message."""
    return TokenSigner(secret).sign(token_claims(connector_id, claims, hull_id, create))


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
        super().__init__(
            base_url,
            headers={
                "Hull-App-Id": connector_id,
                "Hull-Access-Token": connector_secret,
                "Hull-Organization": organization or "",
                "Content-Type": "application/json",
            },
            retry=retry,
        )
        self.firehose_url = firehose_url.rstrip("/") + "/"
        self.connector_id = connector_id
        self._signer = TokenSigner(connector_secret)

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

    def _search(
        self,
        path: str,
        sort_field: str,
        order: str,
        filters: list[dict[str, Any]],
        page: int,
        per_page: int,
        must_not: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        query: dict[str, Any] = {"filter": filters}
        if must_not:
            query["must_not"] = must_not
        body = {"query": {"bool": query}, "sort": {sort_field: order}, "raw": True, "page": page, "per_page": per_page}
        # A page of 100 user reports is ~170 KB of JSON: orjson parses it several times faster.
        result: dict[str, Any] = loads(self.request("POST", path, json_body=body).content)
        return result

    def _by_ids(self, search: Callable[..., dict[str, Any]], field: str, ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), MAX_PER_PAGE):
            found.extend(search([{"terms": {field: ids[start : start + MAX_PER_PAGE]}}], 1, MAX_PER_PAGE)["data"])
        return found

    def search_users(
        self,
        filters: list[dict[str, Any]],
        page: int,
        per_page: int = MAX_PER_PAGE,
        must_not: list[dict[str, Any]] | None = None,
        order: str = "asc",
    ) -> dict[str, Any]:
        return self._search("/search/user_reports", "indexed_at", order, filters, page, per_page, must_not)

    def users_by_ids(self, hull_ids: list[str]) -> list[dict[str, Any]]:
        return self._by_ids(self.search_users, "id", hull_ids)

    def search_events(
        self,
        filters: list[dict[str, Any]],
        page: int,
        per_page: int = MAX_PER_PAGE,
        must_not: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        result = self._search("/search/events", "created_at", "asc", filters, page, per_page, must_not)
        result["data"] = [normalize_event(e) for e in result.get("data", [])]
        return result

    def events_by_ids(self, hull_event_ids: list[str]) -> list[dict[str, Any]]:
        """The events with these ids, in the order asked, whichever form Hull stores them in:
        connector-form documents carry the id in `event_id`, raw index documents in `_id`
        (both are looked up; `normalize_event` gives every result an `event_id`). Ids Hull
        does not have are simply absent from the result."""
        wanted = list(dict.fromkeys(str(i) for i in hull_event_ids))
        found: dict[str, dict[str, Any]] = {}
        for field in ("event_id", "_id"):
            missing = [i for i in wanted if i not in found]
            if not missing:
                break
            for event in self._by_ids(self.search_events, field, missing):
                key = str(event.get("event_id"))
                if key in missing:
                    found.setdefault(key, event)
        return [found[i] for i in wanted if i in found]

    # ----- writes ------------------------------------------------------------------
    def token(self, claims: dict[str, Any], hull_id: str | None = None, create: bool = True) -> str:
        return self._signer.sign(token_claims(self.connector_id, claims, hull_id, create))

    def traits_message(
        self, claims: dict[str, Any], traits: dict[str, Any], hull_id: str | None = None
    ) -> dict[str, Any]:
        now = iso(datetime.now(timezone.utc))
        return {
            "type": "traits",
            "requestId": request_id(),
            "headers": {"Hull-Access-Token": self.token(claims, hull_id, create=False)},
            "body": traits,
            "timestamp": now,
        }

    def track_message(self, claims: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "track",
            "requestId": request_id(),
            "headers": {"Hull-Access-Token": self.token(claims)},
            "body": event,
            "timestamp": iso(datetime.now(timezone.utc)),
        }

    def firehose(self, messages: list[dict[str, Any]]) -> None:
        """Sends messages in POSTs of at most 50, as Hull's own client did."""
        for start in range(0, len(messages), FIREHOSE_BATCH_SIZE):
            now = iso(datetime.now(timezone.utc))
            body = {"batch": messages[start : start + FIREHOSE_BATCH_SIZE], "timestamp": now, "sentAt": now}
            # Content-Type is one of the client's default headers (application/json).
            self.request("POST", "(firehose)", data=dumps(body), url=self.firehose_url)
