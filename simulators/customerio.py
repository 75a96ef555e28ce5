"""Customer.io Track API simulator (v1 customers/events, v2 batch).

Follows shared/reference/customerio.md.  Validation mirrors the documented
limits so the connector's own validation and error handling can be exercised;
state (people, deleted ids, events) is kept in memory for assertions.

Semantics worth knowing when writing tests:
* People are keyed by the identifier exactly as given (URL-decoded path segment
  for v1; for v2 the identifier value, with ``cio_`` prefixed to a ``cio_id``).
* An attribute sent as null or as an empty string is removed from the person.
  Reserved keys ``_timestamp``/``_update`` are never stored; ``_update: true``
  updates an existing person only, never creates one.  Identify undoes a delete.
* ``_timestamp`` (v2: the entry's ``timestamp``) is the time of the update: an
  attribute last set by a later-stamped update is not overwritten by an earlier
  one (unstamped updates always apply).  ``updated_at[id]`` keeps the latest.
* ``anonymous_id`` on identify links the anonymous events recorded with that id
  (``POST /api/v1/events``) to the person: their ``customer`` becomes the person.
* ``merge_customers`` (v1) / action ``merge`` (v2): the secondary's attributes
  fill the primary's missing ones, its events move to the primary, it is deleted.
  Nothing happens (200) when either person is unknown or they are the same.
* Suppress deletes the person and blocks its identifiers (the path one, plus its
  ``id``/``email`` attributes): calls naming them are answered 200 and ignored.
  Unsuppress unblocks them; it does not bring the person back.
* Events do not create people.  An event whose ``id`` (ULID) was already seen is
  answered 200 but not stored again: Customer.io's only deduplication.
* ``faults.poison_batch_entry(id="u-7")`` makes every v2 batch holding an entry
  for that person answer 400 as a whole (nothing applied), until cleared.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from typing import Any, NamedTuple
from urllib.parse import unquote

from ._server import Faults, HttpError, Request, Router, SimulatorServer

MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ENTRY_BYTES = 32 * 1024
RESERVED_ATTRIBUTES = frozenset({"_timestamp", "_update"})
EVENT_TYPES = ("event", "page", "screen")
BATCH_ACTIONS = ("identify", "delete", "event", "page", "screen", "merge", "suppress", "unsuppress")
V2_IDENTIFIER_KEYS = ("id", "email", "phone", "cio_id")
MERGE_IDENTIFIER_KEYS = ("id", "email", "cio_id")  # merge takes no phone
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
_OK = b"{}"
COUNT_KINDS = (
    "region",
    "auth",
    "identify",
    "delete",
    "event",
    "anonymous_event",
    "batch",
    "batch_entries",
    "duplicate_events",
    "merge",
    "suppress",
    "unsuppress",
    "suppressed_ignored",
    "poisoned_batches",
)
_NEVER = float("-inf")


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
        return Problem("identifiers", "too_long", f"identifier cannot be longer than {MAX_IDENTIFIER_BYTES} bytes")
    return None


def check_attributes(attributes: dict, max_count: int) -> Problem | None:
    if sum(1 for name in attributes if name not in RESERVED_ATTRIBUTES) > max_count:
        return Problem("attributes", "too_many", f"cannot identify more than {max_count} attributes in one request")
    for name, value in attributes.items():
        if not name:
            return Problem("attributes", "invalid", "attribute name cannot be empty")
        if name[0] == "_" and name not in RESERVED_ATTRIBUTES:
            return Problem(f"attributes.{name}", "reserved", f"attribute name '{name}' is reserved")
        if len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            return Problem(
                f"attributes.{name}",
                "too_long",
                f"attribute name cannot be longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes",
            )
        if value is not None and _value_size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            return Problem(
                f"attributes.{name}",
                "too_long",
                f"value for attribute '{name}' cannot be longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
            )
    return None


def check_event(name: Any, event_type: Any, data: Any, event_id: Any, timestamp: Any) -> Problem | None:
    if not isinstance(name, str) or not name:
        return Problem("name", "required", "event name is required")
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        return Problem("name", "too_long", f"event name cannot be longer than {MAX_EVENT_NAME_BYTES} bytes")
    if event_type not in EVENT_TYPES:
        return Problem("type", "invalid", "type must be one of event, page, screen")
    if data is not None:
        if not isinstance(data, dict):
            return Problem("data", "invalid", "event data must be an object")
        if _compact_size(data) > MAX_EVENT_DATA_BYTES:
            return Problem("data", "too_long", f"event data cannot be longer than {MAX_EVENT_DATA_BYTES} bytes")
    if event_id is not None and not (isinstance(event_id, str) and _ULID.fullmatch(event_id)):
        return Problem("id", "invalid", "event id must be a valid ULID")
    return check_timestamp("timestamp", timestamp)


def check_timestamp(field: str, value: Any) -> Problem | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return Problem(field, "invalid", f"{field} must be a unix timestamp in seconds")
    return None


def check_merge_side(field: str, side: Any) -> tuple[Problem | None, tuple[str, str] | None]:
    """``{"id"|"email"|"cio_id": value}`` (exactly one) → (problem, (kind, value))."""
    if not isinstance(side, dict) or len(side) != 1:
        return Problem(field, "invalid", f"{field} must have exactly one of id, email or cio_id"), None
    ((kind, value),) = side.items()
    if kind not in MERGE_IDENTIFIER_KEYS or isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return Problem(field, "invalid", f"{field} must have exactly one of id, email or cio_id"), None
    value = str(value)
    problem = check_identifier(value)
    if problem:
        return Problem(field, problem.reason, problem.message), None
    return None, (kind, value)


def check_merge(primary: Any, secondary: Any):
    """(problem, ((kind, value), (kind, value))) for a merge's two people."""
    problem, first = check_merge_side("primary", primary)
    if problem:
        return problem, None
    problem, second = check_merge_side("secondary", secondary)
    if problem:
        return problem, None
    return None, (first, second)


def _entry_people(entry: Any) -> list[tuple[str, str]]:
    """(identifier kind, value) pairs a v2 batch entry names (merge: both people)."""
    if not isinstance(entry, dict):
        return []
    sides = [entry.get("identifiers"), entry.get("primary"), entry.get("secondary")]
    return [
        (str(kind), str(value))
        for side in sides
        if isinstance(side, dict)
        for kind, value in side.items()
        if value is not None
    ]


class CustomerIoFaults(Faults):
    """The shared fault switches plus one for the v2 batch endpoint:
    ``poison_batch_entry(id="u-7")`` (or ``email=``/``phone=``/``cio_id=``) answers every
    ``POST /api/v2/batch`` that holds an entry for that person (its ``identifiers``, or a
    merge's ``primary``/``secondary``) with a 400 for the whole request, nothing applied,
    until ``cure_batch_entry(...)`` or ``clear()``: what a client splitting batches to
    find a bad entry needs.  Over HTTP: ``POST /_sim/faults {"op": "poison_batch_entry",
    "id": "u-7"}``."""

    OPS = (*Faults.OPS, "poison_batch_entry", "cure_batch_entry")

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._poisoned: dict[tuple[str, str], tuple[int, Any]] = {}

    @staticmethod
    def _poison_key(identifiers: dict) -> tuple[str, str]:
        given = [(k, v) for k, v in identifiers.items() if v is not None]
        if len(given) != 1 or given[0][0] not in V2_IDENTIFIER_KEYS:
            raise ValueError("name exactly one of id, email, phone or cio_id")
        return given[0][0], str(given[0][1])

    def poison_batch_entry(
        self,
        *,
        id: Any = None,
        email: Any = None,
        phone: Any = None,
        cio_id: Any = None,
        status: int = 400,
        body: Any = None,
    ) -> None:
        key = self._poison_key({"id": id, "email": email, "phone": phone, "cio_id": cio_id})
        with self._lock:
            self._poisoned[key] = (int(status), body)

    def cure_batch_entry(self, *, id: Any = None, email: Any = None, phone: Any = None, cio_id: Any = None) -> None:
        key = self._poison_key({"id": id, "email": email, "phone": phone, "cio_id": cio_id})
        with self._lock:
            self._poisoned.pop(key, None)

    def poisoned(self, batch: list) -> tuple[int, int, Any] | None:
        """(batch index, status, body) of the first poisoned entry in ``batch``, or None."""
        if not self._poisoned:  # read without the lock, as `active`
            return None
        with self._lock:
            for index, entry in enumerate(batch):
                for key in _entry_people(entry):
                    if key in self._poisoned:
                        return (index, *self._poisoned[key])
        return None

    def describe(self) -> dict:
        description = super().describe()
        with self._lock:
            description["poisoned_batch_entries"] = [
                {kind: value, "status": status} for (kind, value), (status, _) in self._poisoned.items()
            ]
        return description


class CustomerIoSimulator(SimulatorServer):
    """In-memory Customer.io Track API.  Inspect ``people``, ``deleted``, ``suppressed``,
    ``events``, ``merges``, ``updated_at``, ``people_calls`` and ``counts`` (hold
    ``sim.lock`` if requests are in flight)."""

    name = "customerio"
    faults_class = CustomerIoFaults
    faults: CustomerIoFaults

    def __init__(
        self,
        site_id: str = "site",
        api_key: str = "key",
        region: str = "us",
        max_attributes_per_request: int = 300,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
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
        # Blocked identifiers (emails also lower-cased); each maps to the group a suppress
        # blocked together, which one unsuppress releases together.
        self.suppressed: set[str] = set()
        self._suppression_groups: dict[str, frozenset[str]] = {}
        self.merges: list[dict] = []  # {"primary", "secondary", "applied"} per merge asked
        self.updated_at: dict[str, float] = {}  # identifier → latest `_timestamp` applied
        self._stamps: dict[str, dict[str, float]] = {}  # identifier → attribute → `_timestamp`
        self._anonymous_events: dict[str, list[dict]] = {}  # anonymous_id → not yet linked

    def person(self, identifier: str) -> dict | None:
        with self.lock:
            found = self.people.get(identifier)
            return dict(found) if found is not None else None

    def events_for(self, identifier: str) -> list[dict]:
        """The person's events: sent to it, linked from its anonymous_id, merged into it."""
        with self.lock:
            return [event for event in self.events if event["customer"] == identifier]

    def is_suppressed(self, identifier: str) -> bool:
        with self.lock:
            return self._suppressed(identifier)

    def state(self, summary: bool = False) -> dict:
        with self.lock:
            result = {
                "counts": dict(self.counts),
                "people_count": len(self.people),
                "deleted_count": len(self.deleted),
                "events_count": len(self.events),
                "suppressed_count": len(self.suppressed),
            }
            if not summary:
                result.update(
                    people=self.people,
                    deleted=sorted(self.deleted),
                    events=self.events,
                    people_calls=self.people_calls,
                    suppressed=sorted(self.suppressed),
                    merges=self.merges,
                    updated_at=self.updated_at,
                )
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
        r.add("POST", r"/api/v1/customers/(?P<identifier>[^/]+)/suppress", self._suppress)
        r.add("POST", r"/api/v1/customers/(?P<identifier>[^/]+)/unsuppress", self._unsuppress)
        r.add("POST", r"/api/v1/merge_customers", self._merge)
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
            if hmac.compare_digest(site_id.encode(), self.site_id.encode()) and hmac.compare_digest(
                api_key.encode(), self.api_key.encode()
            ):
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
        problem = (
            check_identifier(identifier)
            or check_attributes(attributes, self.max_attributes_per_request)
            or check_timestamp("_timestamp", attributes.get("_timestamp"))
        )
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_identify(
                identifier,
                attributes,
                update_only=attributes.get("_update") is True,
                timestamp=attributes.get("_timestamp"),
            )
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

    def _suppress(self, req: Request, identifier: str):
        self._authorize(req)
        identifier = unquote(identifier)
        self._bump("suppress")
        problem = check_identifier(identifier)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_suppress(identifier)
        return 200, _OK

    def _unsuppress(self, req: Request, identifier: str):
        self._authorize(req)
        identifier = unquote(identifier)
        self._bump("unsuppress")
        problem = check_identifier(identifier)
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_unsuppress(identifier)
        return 200, _OK

    def _merge(self, req: Request):
        self._authorize(req)
        body = self._json_object(req)
        self._bump("merge")
        problem, sides = check_merge(body.get("primary"), body.get("secondary"))
        if problem:
            return 400, self.error_payload(problem.message)
        with self.lock:
            self._apply_merge(*sides)
        return 200, _OK

    @staticmethod
    def _check_v1_event(body: dict) -> Problem | None:
        return check_event(
            body.get("name"), body.get("type", "event"), body.get("data"), body.get("id"), body.get("timestamp")
        )

    def _batch(self, req: Request):
        self._authorize(req)
        if len(req.body) > MAX_BATCH_BYTES:
            return 400, self.error_payload(f"request body cannot be larger than {MAX_BATCH_BYTES} bytes")
        body = req.json()
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            return 400, self.error_payload('request body must be {"batch": [...]}')
        poisoned = self.faults.poisoned(batch)
        if poisoned is not None:
            index, status, payload = poisoned
            self._bump("poisoned_batches")
            return status, payload if payload is not None else {
                "errors": [
                    {
                        "reason": "malformed",
                        "field": "batch",
                        "message": "the request is malformed (simulated: a poisoned entry)",
                    }
                ]
            }
        # Validate everything first (outside the lock), then apply the valid entries.
        errors, valid = [], []
        for index, entry in enumerate(batch):
            problem, target = self._check_batch_entry(entry)
            if problem:
                errors.append(
                    {"batch_index": index, "reason": problem.reason, "field": problem.field, "message": problem.message}
                )
            else:
                valid.append((target, entry))
        with self.lock:
            self.counts["batch"] += 1
            self.counts["batch_entries"] += len(batch)
            for target, entry in valid:
                self._apply_batch_entry(target, entry)
        if errors:
            return 207, {"errors": errors}
        return 200, _OK

    # -- batch entries -------------------------------------------------------------
    def _check_batch_entry(self, entry: Any) -> tuple[Problem | None, Any]:
        """(problem, target): the person's identifier, or for a merge its two sides."""
        if not isinstance(entry, dict):
            return Problem("", "invalid", "batch entry must be an object"), None
        if _compact_size(entry) > MAX_BATCH_ENTRY_BYTES:
            return Problem("", "too_large", f"batch entry cannot be larger than {MAX_BATCH_ENTRY_BYTES} bytes"), None
        if entry.get("type") != "person":
            return Problem("type", "unsupported", "only type 'person' is supported"), None
        action = entry.get("action")
        if action == "merge":  # names its people in primary/secondary, not identifiers
            return check_merge(entry.get("primary"), entry.get("secondary"))
        identifiers = entry.get("identifiers")
        present = (
            [key for key in identifiers if identifiers[key] not in (None, "")] if isinstance(identifiers, dict) else []
        )
        if (
            len(present) != 1
            or present[0] not in V2_IDENTIFIER_KEYS
            or not isinstance(identifiers[present[0]], (str, int))
            or isinstance(identifiers[present[0]], bool)
        ):
            return Problem("identifiers", "invalid", "exactly one of id, email, phone or cio_id is required"), None
        key = present[0]
        identifier = str(identifiers[key])
        if key == "cio_id":
            identifier = f"cio_{identifier}"
        problem = check_identifier(identifier)
        if problem:
            return problem, None
        if action not in BATCH_ACTIONS:
            return Problem("action", "unsupported", f"action must be one of {', '.join(BATCH_ACTIONS)}"), None
        attributes = entry.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            return Problem("attributes", "invalid", "attributes must be an object"), None
        if action == "identify":
            attributes = attributes or {}
            problem = (
                check_attributes(attributes, self.max_attributes_per_request)
                or check_timestamp("timestamp", entry.get("timestamp"))
                or check_timestamp("attributes._timestamp", attributes.get("_timestamp"))
            )
        elif action not in ("delete", "suppress", "unsuppress"):
            event_type = "event" if action == "event" else action
            problem = check_event(entry.get("name"), event_type, attributes, entry.get("id"), entry.get("timestamp"))
        return problem, identifier

    def _apply_batch_entry(self, target: Any, entry: dict) -> None:
        action = entry["action"]
        if action == "identify":
            attributes = entry.get("attributes") or {}
            timestamp = entry.get("timestamp")
            self._apply_identify(
                target,
                attributes,
                update_only=attributes.get("_update") is True,
                timestamp=attributes.get("_timestamp") if timestamp is None else timestamp,
            )
        elif action == "delete":
            self._apply_delete(target)
        elif action == "merge":
            self._apply_merge(*target)
        elif action == "suppress":
            self._apply_suppress(target)
        elif action == "unsuppress":
            self._apply_unsuppress(target)
        else:
            self._store_event(
                target,
                None,
                {
                    "name": entry["name"],
                    "type": action,
                    "timestamp": entry.get("timestamp"),
                    "id": entry.get("id"),
                    "data": entry.get("attributes"),
                },
            )

    # -- state changes (caller holds self.lock) ------------------------------------
    def _suppressed(self, identifier: Any) -> bool:
        if not self.suppressed or not isinstance(identifier, str):
            return False
        return identifier in self.suppressed or identifier.lower() in self.suppressed

    def _ignored(self, *identifiers: Any) -> bool:
        """A call naming a suppressed identifier is answered 200 and does nothing."""
        if self.suppressed and any(self._suppressed(i) for i in identifiers):
            self.counts["suppressed_ignored"] += 1
            return True
        return False

    def _apply_identify(
        self, identifier: str, attributes: dict, update_only: bool, timestamp: float | None = None
    ) -> None:
        self.people_calls[identifier] = self.people_calls.get(identifier, 0) + 1
        if self.suppressed and self._ignored(identifier, attributes.get("id"), attributes.get("email")):
            return
        person = self.people.get(identifier)
        if person is None:
            if update_only:
                return  # `_update: true` never creates a person
            person = self.people[identifier] = {}
            self.deleted.discard(identifier)
        stamps = None
        if timestamp is not None:
            stamps = self._stamps.setdefault(identifier, {})
            if timestamp > self.updated_at.get(identifier, _NEVER):
                self.updated_at[identifier] = timestamp
        for name, value in attributes.items():
            if name in RESERVED_ATTRIBUTES:
                continue
            if stamps is not None:
                if stamps.get(name, _NEVER) > timestamp:
                    continue  # a later-stamped update already set this attribute
                stamps[name] = timestamp
            if value is None or value == "":
                person.pop(name, None)  # null and "" both remove the attribute
            else:
                person[name] = value
        if attributes.get("anonymous_id") and self._anonymous_events:
            # Anonymous events recorded with this anonymous_id now belong to the person.
            for event in self._anonymous_events.pop(person.get("anonymous_id"), ()):
                event["customer"] = identifier

    def _forget(self, identifier: str) -> dict | None:
        """Remove the person (if any) and what is kept beside it; return it."""
        self._stamps.pop(identifier, None)
        self.updated_at.pop(identifier, None)
        return self.people.pop(identifier, None)

    def _apply_delete(self, identifier: str) -> None:
        if self._ignored(identifier):
            return
        self._forget(identifier)
        self.deleted.add(identifier)

    def _find(self, kind: str, value: str) -> str | None:
        """Key of the person an identifier names: a person stored under it, else (id and
        email) a person whose ``id``/``email`` attribute holds it (emails ignore case)."""
        key = f"cio_{value}" if kind == "cio_id" and not value.startswith("cio_") else value
        if key in self.people:
            return key
        if kind == "cio_id":
            return None
        if kind == "email":
            wanted = value.lower()
            return next(
                (k for k, p in self.people.items() if isinstance(p.get("email"), str) and p["email"].lower() == wanted),
                None,
            )
        return next((k for k, p in self.people.items() if p.get("id") == value), None)

    def _apply_merge(self, primary: tuple[str, str], secondary: tuple[str, str]) -> None:
        record = {"primary": {primary[0]: primary[1]}, "secondary": {secondary[0]: secondary[1]}, "applied": False}
        self.merges.append(record)
        if self._ignored(primary[1], secondary[1]):
            return
        primary_key, secondary_key = self._find(*primary), self._find(*secondary)
        if primary_key is None or secondary_key is None or primary_key == secondary_key:
            return  # the primary must exist; an unknown secondary has nothing to give
        target = self.people[primary_key]
        for name, value in self._forget(secondary_key).items():
            if target.get(name) in (None, ""):
                target[name] = value  # fills what the primary has not set
        for event in self.events:
            if event["customer"] == secondary_key:
                event["customer"] = primary_key
        self.deleted.add(secondary_key)
        record.update(applied=True, primary_key=primary_key, secondary_key=secondary_key)

    def _apply_suppress(self, identifier: str) -> None:
        kind = "cio_id" if identifier.startswith("cio_") else ("email" if "@" in identifier else "id")
        key = self._find(kind, identifier)
        group = {identifier}
        if key is not None:
            person = self._forget(key)
            self.deleted.add(key)
            group.add(key)
            group.update(v for v in (person.get("id"), person.get("email")) if isinstance(v, str) and v)
        group |= {value.lower() for value in group if "@" in value}
        frozen = frozenset(group | self._suppression_groups.get(identifier, frozenset()))
        for value in frozen:
            self.suppressed.add(value)
            self._suppression_groups[value] = frozen

    def _apply_unsuppress(self, identifier: str) -> None:
        group = (
            self._suppression_groups.get(identifier) or self._suppression_groups.get(identifier.lower()) or {identifier}
        )
        for value in group:
            self.suppressed.discard(value)
            self._suppression_groups.pop(value, None)

    def _store_event(self, customer: str | None, anonymous_id: str | None, body: dict) -> None:
        if customer is not None and self._ignored(customer):
            return
        event_id = body.get("id")
        if event_id is not None:
            key = event_id.upper()
            if key in self.seen_event_ids:
                self.counts["duplicate_events"] += 1
                return
            self.seen_event_ids.add(key)
        event = {
            "customer": customer,
            "anonymous_id": anonymous_id,
            "name": body["name"],
            "type": body.get("type") or "event",
            "timestamp": body.get("timestamp"),
            "id": event_id,
            "data": body.get("data"),
        }
        self.events.append(event)
        if customer is None and anonymous_id:
            self._anonymous_events.setdefault(anonymous_id, []).append(event)
