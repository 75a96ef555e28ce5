"""Customer.io Track API simulator (v1 customers/events, v2 batch).

Follows shared/reference/customerio.md.  Validation mirrors the documented
limits so the connector's own validation and error handling can be exercised;
state (people, deleted ids, events) is kept in memory for assertions.

Semantics worth knowing when writing tests:
* People are keyed by the identifier exactly as given (URL-decoded path segment
  for v1; for v2 the identifier value, with ``cio_`` prefixed to a ``cio_id``).
* An attribute sent as null is removed from the person.  Reserved keys
  ``_timestamp``/``_update`` are accepted but never stored; ``_update: true``
  does not create a missing person.  Identify undoes a delete.
* Events do not create people.  An event whose ``id`` (ULID) was already seen is
  answered 200 but not stored again: Customer.io's only deduplication.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from typing import Any, NamedTuple
from urllib.parse import unquote

from ._server import HttpError, Request, Router, SimulatorServer

MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ENTRY_BYTES = 32 * 1024
RESERVED_ATTRIBUTES = frozenset({"_timestamp", "_update"})
EVENT_TYPES = ("event", "page", "screen")
BATCH_ACTIONS = ("identify", "delete", "event", "page", "screen")
V2_IDENTIFIER_KEYS = ("id", "email", "phone", "cio_id")
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
_OK = b"{}"
COUNT_KINDS = ("region", "auth", "identify", "delete", "event", "anonymous_event",
               "batch", "batch_entries", "duplicate_events")


class Problem(NamedTuple):
    """One validation failure; ``message`` is what v1 puts in {"meta": {"error"}}."""

    field: str
    reason: str
    message: str


def _compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (dict, list)):
        return _compact_size(value)
    return len(json.dumps(value))


def check_identifier(identifier: str) -> Problem | None:
    if not identifier:
        return Problem("identifiers", "required", "identifier is required")
    if len(identifier.encode()) > MAX_IDENTIFIER_BYTES:
        return Problem("identifiers", "too_long",
                       f"identifier cannot be longer than {MAX_IDENTIFIER_BYTES} bytes")
    return None


def check_attributes(attributes: dict, max_count: int) -> Problem | None:
    if sum(1 for name in attributes if name not in RESERVED_ATTRIBUTES) > max_count:
        return Problem("attributes", "too_many",
                       f"cannot identify more than {max_count} attributes in one request")
    for name, value in attributes.items():
        if not name:
            return Problem("attributes", "invalid", "attribute name cannot be empty")
        if name[0] == "_" and name not in RESERVED_ATTRIBUTES:
            return Problem(f"attributes.{name}", "reserved",
                           f"attribute name '{name}' is reserved")
        if len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            return Problem(f"attributes.{name}", "too_long",
                           f"attribute name cannot be longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        if value is not None and _value_size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            return Problem(f"attributes.{name}", "too_long",
                           f"value for attribute '{name}' cannot be longer than "
                           f"{MAX_ATTRIBUTE_VALUE_BYTES} bytes")
    return None


def check_event(name: Any, event_type: Any, data: Any, event_id: Any,
                timestamp: Any) -> Problem | None:
    if not isinstance(name, str) or not name:
        return Problem("name", "required", "event name is required")
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        return Problem("name", "too_long",
                       f"event name cannot be longer than {MAX_EVENT_NAME_BYTES} bytes")
    if event_type not in EVENT_TYPES:
        return Problem("type", "invalid", "type must be one of event, page, screen")
    if data is not None:
        if not isinstance(data, dict):
            return Problem("data", "invalid", "event data must be an object")
        if _compact_size(data) > MAX_EVENT_DATA_BYTES:
            return Problem("data", "too_long",
                           f"event data cannot be longer than {MAX_EVENT_DATA_BYTES} bytes")
    if event_id is not None and not (isinstance(event_id, str) and _ULID.fullmatch(event_id)):
        return Problem("id", "invalid", "event id must be a valid ULID")
    if timestamp is not None and (isinstance(timestamp, bool)
                                  or not isinstance(timestamp, (int, float))):
        return Problem("timestamp", "invalid", "timestamp must be a unix timestamp in seconds")
    return None


class CustomerIoSimulator(SimulatorServer):
    """In-memory Customer.io Track API.  Inspect ``people``, ``deleted``, ``events``,
    ``people_calls`` and ``counts`` (hold ``sim.lock`` if requests are in flight)."""

    name = "customerio"

    def __init__(self, site_id: str = "site", api_key: str = "key", region: str = "us",
                 max_attributes_per_request: int = 300, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self.region = region
        self.max_attributes_per_request = max_attributes_per_request
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self._expected_authorization = f"Basic {token}"
        super().__init__(host=host, port=port)

    # -- state -------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.people: dict[str, dict] = {}
        self.deleted: set[str] = set()
        self.events: list[dict] = []
        self.people_calls: dict[str, int] = {}
        self.counts: dict[str, int] = dict.fromkeys(COUNT_KINDS, 0)
        self.seen_event_ids: set[str] = set()

    def person(self, identifier: str) -> dict | None:
        with self.lock:
            found = self.people.get(identifier)
            return dict(found) if found is not None else None

    def events_for(self, identifier: str) -> list[dict]:
        with self.lock:
            return [event for event in self.events if event["customer"] == identifier]

    def state(self, summary: bool = False) -> dict:
        with self.lock:
            result = {"counts": dict(self.counts), "people_count": len(self.people),
                      "deleted_count": len(self.deleted), "events_count": len(self.events)}
            if not summary:
                result.update(people=self.people, deleted=sorted(self.deleted),
                              events=self.events, people_calls=self.people_calls)
            return result

    # -- HTTP shape ----------------------------------------------------------------
    def error_payload(self, message: str) -> Any:
        return {"meta": {"error": message}}

    def not_found_payload(self) -> Any:
        return {"meta": {"error": "not found"}}

    def register_routes(self, r: Router) -> None:
        r.add("GET", r"/api/v1/accounts/region", self._region)
        r.add("GET", r"/auth", self._auth)
        r.add("PUT", r"/api/v1/customers/(?P<identifier>[^/]+)", self._identify)
        r.add("DELETE", r"/api/v1/customers/(?P<identifier>[^/]+)", self._delete)
        r.add("POST", r"/api/v1/customers/(?P<identifier>[^/]+)/events", self._customer_event)
        r.add("POST", r"/api/v1/events", self._anonymous_event)
        r.add("POST", r"/api/v2/batch", self._batch)

    def _authorize(self, req: Request) -> None:
        header = req.headers.get("Authorization")
        if header == self._expected_authorization:  # fast path: exact header match
            return
        if header and header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            site_id, _, api_key = decoded.partition(":")
            if (hmac.compare_digest(site_id.encode(), self.site_id.encode())
                    and hmac.compare_digest(api_key.encode(), self.api_key.encode())):
                return
        raise HttpError(401, {"meta": {"error": "Unauthorized request"}})

    def _json_object(self, req: Request) -> dict:
        body = req.json({})
        if not isinstance(body, dict):
            raise HttpError(400, self.error_payload("request body must be a JSON object"))
        return body

    def _bump(self, kind: str, by: int = 1) -> None:
        with self.lock:
            self.counts[kind] += by

    # -- routes ------------------------------------------------------------------
    def _region(self, req: Request):
        self._authorize(req)
        self._bump("region")
        return 200, {"url": self.url, "region": self.region, "environment_id": 1}

    def _auth(self, req: Request):
        self._authorize(req)
        self._bump("auth")
        return 200, {"meta": {"message": "nice credentials."}}

    def _identify(self, req: Request, identifier: str):
        self._authorize(req)
        identifier = unquote(identifier)
        attributes = self._json_object(req)
        self._bump("identify")
        problem = check_identifier(identifier) or check_attributes(
            attributes, self.max_attributes_per_request)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_identify(identifier, attributes,
                                 update_only=attributes.get("_update") is True)
        return 200, _OK

    def _delete(self, req: Request, identifier: str):
        self._authorize(req)
        identifier = unquote(identifier)
        self._bump("delete")
        problem = check_identifier(identifier)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_delete(identifier)
        return 200, _OK

    def _customer_event(self, req: Request, identifier: str):
        self._authorize(req)
        identifier = unquote(identifier)
        body = self._json_object(req)
        self._bump("event")
        problem = check_identifier(identifier) or self._check_v1_event(body)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._store_event(identifier, None, body)
        return 200, _OK

    def _anonymous_event(self, req: Request):
        self._authorize(req)
        body = self._json_object(req)
        self._bump("anonymous_event")
        anonymous_id = body.get("anonymous_id")
        if not isinstance(anonymous_id, str) or not anonymous_id:
            return 400, self.error_payload("anonymous_id is required")
        problem = self._check_v1_event(body)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._store_event(None, anonymous_id, body)
        return 200, _OK

    @staticmethod
    def _check_v1_event(body: dict) -> Problem | None:
        return check_event(body.get("name"), body.get("type", "event"), body.get("data"),
                           body.get("id"), body.get("timestamp"))

    def _batch(self, req: Request):
        self._authorize(req)
        if len(req.body) > MAX_BATCH_BYTES:
            return 400, self.error_payload(
                f"request body cannot be larger than {MAX_BATCH_BYTES} bytes")
        body = req.json()
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            return 400, self.error_payload("request body must be {\"batch\": [...]}")
        # Validate everything first (outside the lock), then apply the valid entries.
        errors, valid = [], []
        for index, entry in enumerate(batch):
            problem, identifier = self._check_batch_entry(entry)
            if problem:
                errors.append({"batch_index": index, "reason": problem.reason,
                               "field": problem.field, "message": problem.message})
            else:
                valid.append((identifier, entry))
        with self.lock:
            self.counts["batch"] += 1
            self.counts["batch_entries"] += len(batch)
            for identifier, entry in valid:
                self._apply_batch_entry(identifier, entry)
        if errors:
            return 207, {"errors": errors}
        return 200, _OK

    # -- batch entries -------------------------------------------------------------
    def _check_batch_entry(self, entry: Any) -> tuple[Problem | None, str | None]:
        if not isinstance(entry, dict):
            return Problem("", "invalid", "batch entry must be an object"), None
        if _compact_size(entry) > MAX_BATCH_ENTRY_BYTES:
            return Problem("", "too_large",
                           f"batch entry cannot be larger than {MAX_BATCH_ENTRY_BYTES} bytes"), None
        if entry.get("type") != "person":
            return Problem("type", "unsupported", "only type 'person' is supported"), None
        identifiers = entry.get("identifiers")
        present = ([key for key in identifiers if identifiers[key] not in (None, "")]
                   if isinstance(identifiers, dict) else [])
        if (len(present) != 1 or present[0] not in V2_IDENTIFIER_KEYS
                or not isinstance(identifiers[present[0]], (str, int))
                or isinstance(identifiers[present[0]], bool)):
            return Problem("identifiers", "invalid",
                           "exactly one of id, email, phone or cio_id is required"), None
        key = present[0]
        identifier = str(identifiers[key])
        if key == "cio_id":
            identifier = f"cio_{identifier}"
        problem = check_identifier(identifier)
        if problem:
            return problem, None
        action = entry.get("action")
        if action not in BATCH_ACTIONS:
            return Problem("action", "unsupported",
                           f"action must be one of {', '.join(BATCH_ACTIONS)}"), None
        attributes = entry.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            return Problem("attributes", "invalid", "attributes must be an object"), None
        if action == "identify":
            problem = check_attributes(attributes or {}, self.max_attributes_per_request)
        elif action != "delete":
            event_type = "event" if action == "event" else action
            problem = check_event(entry.get("name"), event_type, attributes, entry.get("id"),
                                  entry.get("timestamp"))
        return problem, identifier

    def _apply_batch_entry(self, identifier: str, entry: dict) -> None:
        action = entry["action"]
        if action == "identify":
            self._apply_identify(identifier, entry.get("attributes") or {}, update_only=False)
        elif action == "delete":
            self._apply_delete(identifier)
        else:
            self._store_event(identifier, None, {
                "name": entry["name"], "type": action, "timestamp": entry.get("timestamp"),
                "id": entry.get("id"), "data": entry.get("attributes")})

    # -- state changes (caller holds self.lock) ------------------------------------
    def _apply_identify(self, identifier: str, attributes: dict, update_only: bool) -> None:
        self.people_calls[identifier] = self.people_calls.get(identifier, 0) + 1
        person = self.people.get(identifier)
        if person is None:
            if update_only:
                return  # `_update: true` never creates a person
            person = self.people[identifier] = {}
            self.deleted.discard(identifier)
        for name, value in attributes.items():
            if name in RESERVED_ATTRIBUTES:
                continue
            if value is None:
                person.pop(name, None)
            else:
                person[name] = value

    def _apply_delete(self, identifier: str) -> None:
        self.people.pop(identifier, None)
        self.deleted.add(identifier)

    def _store_event(self, customer: str | None, anonymous_id: str | None, body: dict) -> None:
        event_id = body.get("id")
        if event_id is not None:
            key = event_id.upper()
            if key in self.seen_event_ids:
                self.counts["duplicate_events"] += 1
                return
            self.seen_event_ids.add(key)
        self.events.append({"customer": customer, "anonymous_id": anonymous_id,
                            "name": body["name"], "type": body.get("type") or "event",
                            "timestamp": body.get("timestamp"), "id": event_id,
                            "data": body.get("data")})
