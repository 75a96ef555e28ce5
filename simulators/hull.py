"""Hull simulator: REST search API (``/api/v1``) and firehose (``/firehose``).

Follows shared/reference/hull.md; this file is the executable form of that
contract.  Point a client at ``HULL_API_URL=<url>/api/v1`` and
``HULL_FIREHOSE_URL=<url>/firehose``.

Design notes:
* ``indexed_at`` has second precision and comes from a controllable clock
  (``sim.now``, ``sim.advance()``), so many users share one value, exactly the
  situation keyset pagination must survive.  Ties are ordered by hull id.
* Users are kept in a list sorted by (indexed_at, id), maintained on every
  write, so "changed since" searches over 100k users stay cheap.
* Stored user dicts are only ever updated at the top level; nested values
  (segment_ids, account, ...) are replaced, never mutated, so a shallow copy is
  a safe snapshot.
* Firehose ``traits``: keys become ``traits_<key>`` (a few like ``email``/``name``
  stay top-level), null stores None, ``setIfNull``/``inc``/``dec`` operations are
  honoured; unknown users are created unless ``io.hull.create`` is false.
  ``track`` is stored in ``tracked_events`` once per ``event_id``; ``alias``,
  ``unalias`` and ``incinerate`` are only recorded in ``firehose_messages``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import random
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import jwt

from ._search import (
    QueryError,
    field_matcher,
    in_range,
    page_params,
    paginate,
    parse_time,
    range_of,
    sort_direction,
    split_query,
    terms_of,
)
from ._server import HttpError, Request, Router, SimulatorServer

DEFAULT_START = datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone.utc)
DEFAULT_CONNECTOR_ID = "5f0c5e11c0ffee0123456789"
MAX_SEGMENTS_PER_PAGE = 200
DEAD_KEYS_SWEEP = 5_000  # re-indexed users' old keys kept in the order index before a sweep
FIREHOSE_MAX_BATCH = 100
FIREHOSE_TYPES = ("traits", "track", "alias", "unalias", "incinerate")
TRAIT_OPERATIONS = ("set", "setIfNull", "inc", "dec")
IDENTITY_CLAIMS = ("id", "external_id", "email", "anonymous_id")
# Trait names the firehose writes as top-level user attributes instead of traits_<name>.
TOP_LEVEL_ATTRIBUTES = frozenset({"email", "name", "first_name", "last_name", "phone", "picture", "description"})
TOKEN_LEEWAY_SECONDS = 60
# The HS256 header as PyJWT (and the connector's TokenSigner) serialise it, and the claims a
# firehose token of the usual shape carries: `_verify_token`'s fast path takes only those.
_HS256_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode("ascii")
_USUAL_CLAIMS = frozenset({"iss", "iat", "sub", "io.hull.asUser", "io.hull.subjectType", "io.hull.create"})


def iso_seconds(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``: Hull's indexed_at precision."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def sign_user_token(
    connector_id: str,
    secret: str,
    as_user: dict,
    *,
    sub: str | None = None,
    create: bool | None = None,
    issued_at: int | None = None,
    **extra_claims: Any,
) -> str:
    """A firehose per-message token, as the connector must build it (handy in tests)."""
    claims = {
        "iss": connector_id,
        "iat": int(time.time() if issued_at is None else issued_at),
        "io.hull.asUser": as_user,
        "io.hull.subjectType": "user",
        **extra_claims,
    }
    if sub is not None:
        claims["sub"] = sub
    if create is not None:
        claims["io.hull.create"] = create
    return jwt.encode(claims, secret, algorithm="HS256")


def _props_list(properties: dict) -> list[dict]:
    """Hull's raw-index form of event properties."""
    props = []
    for name, value in properties.items():
        prop = {"field_name": name, "text_value": None, "num_value": None, "bool_value": None, "date_value": None}
        if isinstance(value, bool):
            prop["bool_value"] = value
        elif isinstance(value, (int, float)):
            prop["num_value"] = value
        elif isinstance(value, datetime):
            prop["date_value"] = iso_seconds(_utc(value).timestamp())
        elif value is not None:
            prop["text_value"] = value if isinstance(value, str) else str(value)
        props.append(prop)
    return props


def _date_matcher(field: str, bounds: dict[str, float]):
    def matches(doc: dict) -> bool:
        try:
            return in_range(parse_time(doc.get(field)), bounds)
        except QueryError:
            return False  # missing or not a date: excluded, as Elasticsearch would

    return matches


def _first(key: tuple) -> float:
    return key[0]


def query_predicate(query: Any, clause_predicate):
    """A bool query as one predicate: every required clause holds and no `must_not` query
    (itself possibly a bool) matches. Users and events differ only in `clause_predicate`."""
    required, excluded = split_query(query)
    must = [clause_predicate(clause) for clause in required]
    must_not = [query_predicate(q, clause_predicate) for q in excluded]
    return lambda item: all(p(item) for p in must) and not any(p(item) for p in must_not)


class HullSimulator(SimulatorServer):
    """In-memory Hull organization with one connector.

    Inspect ``users`` (hull id → user report), ``segments``, ``events``,
    ``tracked_events`` and ``firehose_messages``; hold ``sim.lock`` while
    reading them if requests are in flight.
    """

    name = "hull"
    # Control routes added from other modules: (method, pattern, handler(sim, req, **params)).
    # `simulators.seed` adds ``POST /_sim/seed`` here, so this module never imports it
    # (seed depends on hull, never the reverse). Routes added after a simulator was
    # created apply to simulators created later.
    extra_control_routes: ClassVar[list[tuple[str, str, Callable[..., Any]]]] = []

    @classmethod
    def add_control_route(cls, method: str, pattern: str, handler: Callable[..., Any]) -> None:
        """Register ``handler(sim, req, **params)`` for ``method`` + ``pattern`` (idempotent)."""
        if not any(m == method and p == pattern for m, p, _ in cls.extra_control_routes):
            cls.extra_control_routes.append((method, pattern, handler))

    def __init__(
        self,
        organization: str = "acme.hullapp.io",
        connector_id: str = DEFAULT_CONNECTOR_ID,
        connector_secret: str = "secret",
        *,
        start_time: datetime = DEFAULT_START,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.organization = organization
        self.connector_id = connector_id
        self.connector_secret = connector_secret
        self._start_time = _utc(start_time)
        self._seed = seed
        super().__init__(host=host, port=port)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def firehose_url(self) -> str:
        return f"{self.url}/firehose"

    def user_token(self, as_user: dict, **kwargs: Any) -> str:
        return sign_user_token(self.connector_id, self.connector_secret, as_user, **kwargs)

    # -- state -------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._now = self._start_time
        self._stamp_cache: tuple = (None, "", 0)
        self._rng = random.Random(self._seed)
        self.users: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}
        self.events: list[dict] = []
        # Event index entries are (created_at epoch, event id, sequence, event): ordered as
        # search results are, the sequence keeping equal (time, id) pairs apart.
        self._event_sequence = 0
        self._event_order: list[tuple] = []  # every entry, sorted
        self._event_pending: list[tuple] = []  # added since the last search, not yet sorted in
        self._events_by_user: dict[str, list[tuple]] = {}  # user id → entries
        self._events_by_id: dict[str, list[tuple]] = {}  # event id (either form) → entries
        # How the last event search found its candidates and how many it looked at.
        self.last_event_search: dict[str, Any] = {}
        self.tracked_events: list[dict] = []
        self._tracked_ids: set = set()
        self.firehose_messages: list[dict] = []
        self.firehose_batches = 0
        self._order: list[tuple[int, str]] = []  # (indexed_at epoch, hull id), sorted
        # Keys of `_order` no longer current (the user was re-indexed or removed). Deleting
        # from the middle of a million-entry list costs ~0.1 ms of memmove per re-index;
        # dead keys are skipped by readers and swept out in bulk instead.
        self._dead_keys: set[tuple[int, str]] = set()
        self._order_key: dict[str, tuple[int, str]] = {}
        self._by_external_id: dict[str, str] = {}
        self._by_email: dict[str, str] = {}
        self._by_anonymous_id: dict[str, str] = {}

    def state(self, summary: bool = False) -> dict:
        with self.lock:
            result = {
                "now": self._stamp()[0],
                "users_count": len(self.users),
                "segments_count": len(self.segments),
                "events_count": len(self.events),
                "tracked_events_count": len(self.tracked_events),
                "firehose_messages": len(self.firehose_messages),
                "firehose_batches": self.firehose_batches,
            }
            if not summary:
                result.update(
                    users=self.users,
                    segments=list(self.segments.values()),
                    tracked_events=self.tracked_events,
                    events=self.events,
                )
            return result

    # -- clock -------------------------------------------------------------------
    @property
    def now(self) -> datetime:
        return self._now

    @now.setter
    def now(self, value: datetime) -> None:
        with self.lock:
            self._now = _utc(value)

    def advance(self, seconds: float) -> datetime:
        with self.lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def _stamp(self) -> tuple[str, int]:
        """(indexed_at string, epoch seconds) for the current clock, cached per value."""
        now, iso, epoch = self._stamp_cache
        if now != self._now:
            epoch = math.floor(self._now.timestamp())
            iso = iso_seconds(epoch)
            self._stamp_cache = (self._now, iso, epoch)
        return iso, epoch

    def _new_id(self) -> str:
        while True:
            candidate = f"{self._rng.getrandbits(96):024x}"
            if candidate not in self.users:
                return candidate

    # -- users ---------------------------------------------------------------------
    def upsert_user(self, user: dict) -> dict:
        """Create or shallow-merge a user report (needs "id"); indexed_at = clock."""
        hull_id = user.get("id")
        if not isinstance(hull_id, str) or not hull_id:
            raise ValueError("a user needs a string 'id'")
        with self.lock:
            stored = self.users.get(hull_id)
            if stored is None:
                stored = {"id": hull_id, "created_at": self._stamp()[0], "segment_ids": [], "anonymous_ids": []}
                self.users[hull_id] = stored
            else:
                self._unindex_identity(stored)
            stored.update(user)
            stored.pop("indexed_at", None)  # always the clock's, set by _touch
            self._index_identity(stored)
            self._touch(stored)
            return dict(stored)

    def set_trait(self, hull_id: str, name: str, value: Any) -> None:
        """Set ``traits_<name>`` (a name already starting with ``traits_`` is kept)."""
        with self.lock:
            user = self._require_user(hull_id)
            user[name if name.startswith("traits_") else f"traits_{name}"] = value
            self._touch(user)

    def set_segments(self, hull_id: str, segment_ids: Iterable[str]) -> None:
        with self.lock:
            user = self._require_user(hull_id)
            user["segment_ids"] = list(segment_ids)
            self._touch(user)

    def remove_user(self, hull_id: str) -> None:
        with self.lock:
            user = self.users.pop(hull_id, None)
            if user is None:
                return
            self._unindex_identity(user)
            self._drop_order_key(hull_id)
            removed = self._events_by_user.pop(hull_id, None)
            if removed:
                self.events = [e for e in self.events if e.get("user_id") != hull_id]
                gone = {entry[2] for entry in removed}
                self._event_order = [e for e in self._event_order if e[2] not in gone]
                self._event_pending = [e for e in self._event_pending if e[2] not in gone]
                for entry in removed:
                    same_id = self._events_by_id.get(entry[1], [])
                    same_id[:] = [e for e in same_id if e[2] not in gone]
                    if not same_id:
                        self._events_by_id.pop(entry[1], None)

    def user(self, hull_id: str) -> dict | None:
        with self.lock:
            found = self.users.get(hull_id)
            return dict(found) if found is not None else None

    def find_user(
        self, *, external_id: str | None = None, email: str | None = None, anonymous_id: str | None = None
    ) -> dict | None:
        with self.lock:
            hull_id = (
                (external_id is not None and self._by_external_id.get(str(external_id)))
                or (email is not None and self._by_email.get(email.lower()))
                or (anonymous_id is not None and self._by_anonymous_id.get(anonymous_id))
            )
            return self.user(hull_id) if hull_id else None

    def _require_user(self, hull_id: str) -> dict:
        user = self.users.get(hull_id)
        if user is None:
            raise KeyError(f"unknown hull user {hull_id!r}")
        return user

    def _touch(self, user: dict) -> None:
        """Re-index the user at the current clock (caller holds the lock)."""
        iso, epoch = self._stamp()
        user["indexed_at"] = iso
        hull_id = user["id"]
        key = (epoch, hull_id)
        if self._order_key.get(hull_id) == key:
            return
        self._drop_order_key(hull_id)
        self._order_key[hull_id] = key
        if key in self._dead_keys:
            self._dead_keys.discard(key)  # its old copy is still in `_order`: current again
        elif not self._order or key > self._order[-1]:
            self._order.append(key)  # the common case: the clock only moves forward
        else:
            insort(self._order, key)

    def _drop_order_key(self, hull_id: str) -> None:
        old = self._order_key.pop(hull_id, None)
        if old is not None:
            self._dead_keys.add(old)
            if len(self._dead_keys) > DEAD_KEYS_SWEEP:
                dead = self._dead_keys
                self._order = [key for key in self._order if key not in dead]
                self._dead_keys = set()

    def _index_identity(self, user: dict) -> None:
        hull_id = user["id"]
        if user.get("external_id") is not None:
            self._by_external_id[str(user["external_id"])] = hull_id
        if isinstance(user.get("email"), str):
            self._by_email[user["email"].lower()] = hull_id
        for anonymous_id in user.get("anonymous_ids") or ():
            self._by_anonymous_id[anonymous_id] = hull_id

    def _unindex_identity(self, user: dict) -> None:
        hull_id = user["id"]
        email = user.get("email")
        for index, value in (
            (self._by_external_id, user.get("external_id")),
            (self._by_email, email.lower() if isinstance(email, str) else None),
        ):
            if value is not None and index.get(str(value)) == hull_id:
                del index[str(value)]
        for anonymous_id in user.get("anonymous_ids") or ():
            if self._by_anonymous_id.get(anonymous_id) == hull_id:
                del self._by_anonymous_id[anonymous_id]

    # -- segments ------------------------------------------------------------------
    def add_segment(self, segment_id: str, name: str) -> dict:
        with self.lock:
            iso = self._stamp()[0]
            segment = {
                "id": segment_id,
                "name": name,
                "type": "users_segment",
                "created_at": iso,
                "updated_at": iso,
                "stats": {"users": 0},
            }
            self.segments[segment_id] = segment
            return dict(segment)

    # -- events --------------------------------------------------------------------
    def add_event(self, event: dict) -> dict:
        """Store an event in the form Hull handed to connectors (``event_id``, ``properties``)."""
        stored = self._normalise_event(event)
        with self.lock:
            self._store_event(stored, stored["event_id"])
        return dict(stored)

    def add_raw_event(self, event: dict) -> dict:
        """Store an event in the raw-index form (``_id``, ``props`` list).

        Accepts either the connector form (converted) or a dict already in raw form.
        """
        if "_id" in event or "props" in event:
            raw = dict(event)
            raw.setdefault("_id", self._new_event_id())
            raw.setdefault("created_at", self._stamp()[0])
            raw.setdefault("props", [])
        else:
            normal = self._normalise_event(event)
            raw = {
                "_id": normal.pop("event_id"),
                "event": normal.pop("event"),
                "created_at": normal.pop("created_at"),
                "props": _props_list(normal.pop("properties")),
                **normal,
            }
        if not isinstance(raw.get("user_id"), str) or not isinstance(raw.get("event"), str):
            raise ValueError("an event needs 'user_id' and 'event'")
        with self.lock:
            self._store_event(raw, raw["_id"])
        return dict(raw)

    def _new_event_id(self) -> str:
        with self.lock:
            return f"{self._rng.getrandbits(128):032x}"

    def _normalise_event(self, event: dict) -> dict:
        if not isinstance(event.get("user_id"), str) or not isinstance(event.get("event"), str):
            raise ValueError("an event needs 'user_id' and 'event'")
        created_at = event.get("created_at")
        if isinstance(created_at, datetime):
            created_at = iso_seconds(_utc(created_at).timestamp())
        return {
            "event_id": event.get("event_id") or self._new_event_id(),
            "event": event["event"],
            "created_at": created_at or self._stamp()[0],
            "properties": event.get("properties") or {},
            "context": event.get("context") or {},
            "user_id": event["user_id"],
            "anonymous_id": event.get("anonymous_id"),
            "event_source": event.get("event_source", "track"),
            "event_type": event.get("event_type", "track"),
            **{k: event[k] for k in event.keys() - _EVENT_FIELDS},
        }

    def _store_event(self, event: dict, event_id: str) -> None:
        try:
            epoch = parse_time(event["created_at"])
        except QueryError as exc:
            raise ValueError(str(exc)) from None
        self._event_sequence += 1
        entry = (epoch, str(event_id), self._event_sequence, event)
        self.events.append(event)
        self._event_pending.append(entry)
        self._events_by_user.setdefault(event["user_id"], []).append(entry)
        self._events_by_id.setdefault(entry[1], []).append(entry)

    def _sorted_events(self) -> list[tuple]:
        """The sorted event index, with events added since the last search merged in: one
        sort after bulk seeding, a few insertions after a few `add_event` calls."""
        pending, order = self._event_pending, self._event_order
        if pending:
            if len(pending) <= 64:
                for entry in pending:
                    if not order or entry > order[-1]:
                        order.append(entry)
                    else:
                        insort(order, entry)
            else:
                order.extend(pending)
                order.sort()
            self._event_pending = []
        return order

    # -- HTTP shape ----------------------------------------------------------------
    def error_payload(self, message: str) -> Any:
        return {"message": message}

    def not_found_payload(self) -> Any:
        return {"message": "Not found"}

    def register_routes(self, r: Router) -> None:
        r.add("GET", r"/api/v1/users_segments", self._list_segments)
        r.add("POST", r"/api/v1/search/user_reports", self._search_user_reports)
        r.add("POST", r"/api/v1/search/events", self._search_events)
        r.add("POST", r"/firehose/?", self._firehose)

    def register_control_routes(self, r: Router) -> None:
        r.add("POST", r"/_sim/users", self._control_users)
        r.add("DELETE", r"/_sim/users/(?P<hull_id>[^/]+)", self._control_remove_user)
        r.add("POST", r"/_sim/segments", self._control_segments)
        r.add("POST", r"/_sim/events", self._control_events)
        r.add("POST", r"/_sim/advance", self._control_advance)
        r.add("POST", r"/_sim/token", self._control_token)
        for method, pattern, handler in self.extra_control_routes:
            r.add(method, pattern, functools.partial(handler, self))

    def _authorize(self, req: Request) -> None:
        app_id = req.headers.get("Hull-App-Id") or ""
        token = req.headers.get("Hull-Access-Token") or ""
        if not (
            hmac.compare_digest(app_id.encode(), self.connector_id.encode())
            and hmac.compare_digest(token.encode(), self.connector_secret.encode())
        ):
            raise HttpError(401, {"message": "Invalid credentials"})

    def _json_object(self, req: Request) -> dict:
        body = req.json({})
        if not isinstance(body, dict):
            raise HttpError(400, {"message": "request body must be a JSON object"})
        return body

    # -- REST routes ---------------------------------------------------------------
    def _list_segments(self, req: Request):
        self._authorize(req)
        query = req.query
        try:
            page = int(query.get("page", 1))
            per_page = int(query.get("per_page", 50))
        except ValueError:
            raise HttpError(400, {"message": "page and per_page must be integers"}) from None
        if page < 1 or not 1 <= per_page <= MAX_SEGMENTS_PER_PAGE:
            raise HttpError(400, {"message": f"per_page must be between 1 and {MAX_SEGMENTS_PER_PAGE}"})
        with self.lock:
            start = (page - 1) * per_page
            chosen = list(self.segments.values())[start : start + per_page]
            wanted = {segment["id"] for segment in chosen}
            counts = dict.fromkeys(wanted, 0)
            if wanted:
                for user in self.users.values():
                    for segment_id in user.get("segment_ids") or ():
                        if segment_id in counts:
                            counts[segment_id] += 1
            return 200, [{**segment, "stats": {"users": counts[segment["id"]]}} for segment in chosen]

    def _search_user_reports(self, req: Request):
        self._authorize(req)
        body = self._json_object(req)
        try:
            page, per_page = page_params(body, req.query)
            direction = sort_direction(body.get("sort"), "indexed_at", ("id", "_id"))
            with self.lock:
                fast = self._keyset_page(body.get("query"), page, per_page, direction)
                if fast is not None:
                    chosen, pagination = fast
                else:
                    keys = self._matching_user_keys(body.get("query"))
                    if direction == "desc":
                        keys.reverse()
                    chosen, pagination = paginate(keys, page, per_page)
                data = [dict(self.users[hull_id]) for _, hull_id in chosen]
        except QueryError as exc:
            raise HttpError(400, {"message": str(exc)}) from None
        return 200, {"data": data, "pagination": pagination}

    def _keyset_page(self, query: Any, page: int, per_page: int, direction: str):
        """The connector's keyset walk (``indexed_at`` ranges, minus ids, minus ids pinned to
        one ``indexed_at`` second) answered without building the list of every later user:
        O(page + excluded ids) instead of O(users after the cursor), which made a walk over
        a large workspace quadratic. Returns None for any other query (the general path)."""
        required, excluded = split_query(query)
        ranges = []
        for clause in required:
            if next(iter(clause)) != "range" or next(iter(clause["range"]), None) != "indexed_at":
                return None
            ranges.append(range_of(clause)[1])
        excluded_keys: set = set()
        for excluded_query in excluded:
            kind = next(iter(excluded_query), None) if isinstance(excluded_query, dict) else None
            if kind in ("terms", "term") and terms_of(excluded_query)[0] in ("id", "_id"):
                ids, bounds = terms_of(excluded_query)[1], {}
            else:
                pinned = self._ids_at_one_time(excluded_query)
                if pinned is None:
                    return None
                ids, bounds = pinned
            for hull_id in ids:
                key = self._order_key.get(hull_id)
                if key is not None and in_range(key[0], bounds):
                    excluded_keys.add(key)
        order = self._order
        low, high = _slice_bounds(order, ranges)
        if low >= high:
            return [], {"page": page, "per_page": per_page, "pages": 0, "total": 0}
        first, last = order[low], order[high - 1]
        dead = self._dead_keys
        total = (
            (high - low)
            - sum(1 for key in excluded_keys if first <= key <= last)
            - sum(1 for key in dead if first <= key <= last)
        )
        start, chosen = (page - 1) * per_page, []
        positions = range(low, high) if direction != "desc" else range(high - 1, low - 1, -1)
        skipped = 0
        for position in positions:
            key = order[position]
            if key in excluded_keys or key in dead:
                continue
            if skipped < start:
                skipped += 1
                continue
            chosen.append(key)
            if len(chosen) == per_page:
                break
        return chosen, {"page": page, "per_page": per_page, "pages": math.ceil(total / per_page), "total": total}

    @staticmethod
    def _ids_at_one_time(query: Any):
        """``bool`` of exactly ``terms id`` + ``range indexed_at`` → (ids, bounds), else None."""
        if not (
            isinstance(query, dict)
            and set(query) == {"bool"}
            and isinstance(query["bool"], dict)
            and set(query["bool"]) <= {"filter", "must"}
        ):
            return None
        required, excluded = split_query(query)
        if excluded or len(required) != 2:
            return None
        ids = bounds = None
        for clause in required:
            kind = next(iter(clause))
            if kind in ("terms", "term") and terms_of(clause)[0] in ("id", "_id"):
                ids = terms_of(clause)[1]
            elif kind == "range" and next(iter(clause["range"]), None) == "indexed_at":
                bounds = range_of(clause)[1]
        return (ids, bounds) if ids is not None and bounds is not None else None

    def _matching_user_keys(self, query: Any) -> list[tuple[int, str]]:
        """Sorted (indexed_at epoch, id) keys of users matching ``query`` (lock held).

        ``indexed_at`` ranges and ``id`` terms use the sorted index; every other
        clause, and every ``must_not``, is checked user by user.
        """
        required, excluded = split_query(query)
        ranges, id_sets, predicates, excluded_ids = [], [], [], set()
        for clause in required:
            kind = next(iter(clause))
            if kind == "range" and next(iter(clause["range"]), None) == "indexed_at":
                ranges.append(range_of(clause)[1])
            elif kind in ("terms", "term") and terms_of(clause)[0] in ("id", "_id"):
                id_sets.append(terms_of(clause)[1])
            else:
                predicates.append(self._user_clause_predicate(clause))
        for excluded_query in excluded:
            kind = next(iter(excluded_query), None) if isinstance(excluded_query, dict) else None
            if kind in ("terms", "term") and terms_of(excluded_query)[0] in ("id", "_id"):
                # The connector's keyset walk: "not the ids already handled".
                excluded_ids |= terms_of(excluded_query)[1]
            else:
                matches = self._user_query_predicate(excluded_query)
                predicates.append(lambda doc, matches=matches: not matches(doc))
        if id_sets:
            ids = set.intersection(*id_sets)
            keys = sorted(self._order_key[i] for i in ids if i in self._order_key)
            keys = [key for key in keys if all(in_range(key[0], b) for b in ranges)]
        else:
            order = self._order
            # Binary search on the sorted index instead of scanning every user.
            low, high = _slice_bounds(order, ranges)
            keys = order[low:high]
            if self._dead_keys:
                keys = [key for key in keys if key not in self._dead_keys]
        if excluded_ids:
            keys = [key for key in keys if key[1] not in excluded_ids]
        if predicates:
            users = self.users
            keys = [key for key in keys if all(p(users[key[1]]) for p in predicates)]
        return keys

    @staticmethod
    def _user_clause_predicate(clause: dict):
        kind = next(iter(clause))
        if kind == "range":
            return _date_matcher(*range_of(clause))
        if kind in ("terms", "term"):
            field, values = terms_of(clause)
            return field_matcher("id" if field == "_id" else field, values)
        raise QueryError(f"unsupported filter {kind!r} on user_reports")

    def _user_query_predicate(self, query: Any):
        return query_predicate(query, self._user_clause_predicate)

    def _search_events(self, req: Request):
        self._authorize(req)
        body = self._json_object(req)
        try:
            page, per_page = page_params(body, req.query)
            direction = sort_direction(body.get("sort"), "created_at", ("event_id", "_id"))
            with self.lock:
                chosen, pagination = self._event_page(body.get("query"), page, per_page, direction)
                data = [dict(entry[3]) for entry in chosen]
        except QueryError as exc:
            raise HttpError(400, {"message": str(exc)}) from None
        return 200, {"data": data, "pagination": pagination}

    def _event_page(self, query: Any, page: int, per_page: int, direction: str):
        """One page of events matching ``query`` (lock held), in (created_at, id) order.

        Candidates come from an index: the events of named users (``terms user_id``, or
        ``has_parent`` on user ids), the events with named ids (``terms event_id``/``_id``),
        or else the sorted index between the ``created_at`` bounds, walked only as far as
        the page needs. Every clause is still checked on every candidate."""
        required, excluded = split_query(query)
        predicates = [self._event_clause_predicate(clause) for clause in required]
        for excluded_query in excluded:
            matches = self._event_query_predicate(excluded_query)
            predicates.append(lambda entry, matches=matches: not matches(entry))
        user_ids: set | None = None
        event_ids: set | None = None
        ranges = []
        for clause in required:
            kind = next(iter(clause))
            if kind == "has_parent":
                ids = self._parent_id_terms(clause)
            elif kind in ("terms", "term") and terms_of(clause)[0] in ("event_id", "_id"):
                values = terms_of(clause)[1]
                event_ids = values if event_ids is None else event_ids & values
                continue
            elif kind in ("terms", "term") and terms_of(clause)[0] == "user_id":
                ids = terms_of(clause)[1]
            else:
                if kind == "range" and next(iter(clause["range"]), None) == "created_at":
                    ranges.append(range_of(clause)[1])
                continue
            if ids is not None:
                user_ids = ids if user_ids is None else user_ids & ids
        if event_ids is not None or user_ids is not None:
            if event_ids is not None:
                candidates = [e for i in event_ids for e in self._events_by_id.get(str(i), ())]
            else:
                candidates = [e for i in user_ids for e in self._events_by_user.get(i, ())]
            self.last_event_search = {
                "index": "event id" if event_ids is not None else "user id",
                "examined": len(candidates),
            }
            entries = sorted((e for e in candidates if all(p(e) for p in predicates)), reverse=direction == "desc")
            return paginate(entries, page, per_page)
        return self._scan_events(ranges, predicates, page, per_page, direction)

    def _scan_events(self, ranges: list[dict], predicates: list, page: int, per_page: int, direction: str):
        """Walk the sorted index within the ``created_at`` bounds, only as far as the page
        and one more match: the cost grows with ``page × per_page``, not with the number
        of events. ``total`` is exact when the walk reached the last match; otherwise it
        counts the matches up to this page plus one (``"total_relation": "gte"``, as
        Elasticsearch reports a total it did not count to the end), so ``pages`` still
        says whether another page exists."""
        order = self._sorted_events()
        low, high = _slice_bounds(order, ranges)
        start, chosen, matched, exact = (page - 1) * per_page, [], 0, True
        positions = range(low, high) if direction != "desc" else range(high - 1, low - 1, -1)
        examined = 0
        for position in positions:
            examined += 1
            entry = order[position]
            if not all(p(entry) for p in predicates):
                continue
            matched += 1
            if matched > start + per_page:
                exact = False  # one match past the page is all `pages` needs
                break
            if matched > start:
                chosen.append(entry)
        self.last_event_search = {"index": "created_at", "examined": examined}
        pagination = {"page": page, "per_page": per_page, "pages": math.ceil(matched / per_page), "total": matched}
        if not exact:
            pagination["total_relation"] = "gte"
        return chosen, pagination

    def _parent_id_terms(self, clause: dict) -> set | None:
        """The user ids of a ``has_parent`` whose query is only ``terms id``; else None."""
        spec = clause["has_parent"]
        if not isinstance(spec, dict) or spec.get("parent_type") != "user_report":
            raise QueryError("has_parent needs parent_type user_report")
        required, excluded = split_query(spec.get("query"))
        if excluded or len(required) != 1:
            return None
        kind = next(iter(required[0]))
        if kind in ("terms", "term") and terms_of(required[0])[0] in ("id", "_id"):
            return terms_of(required[0])[1]
        return None

    def _parent_predicate(self, clause: dict):
        """``has_parent`` as a predicate on events: the event's user matches the parent
        query (checked once per user and query, on the user report as it is now)."""
        spec = clause["has_parent"]
        if not isinstance(spec, dict) or spec.get("parent_type") != "user_report":
            raise QueryError("has_parent needs parent_type user_report")
        matches = self._user_query_predicate(spec.get("query"))
        users, seen = self.users, {}

        def predicate(entry) -> bool:
            user_id = entry[3].get("user_id")
            found = seen.get(user_id)
            if found is None:
                user = users.get(user_id)
                found = seen[user_id] = user is not None and matches(user)
            return found

        return predicate

    def _event_clause_predicate(self, clause: dict):
        """A predicate on index entries. Terms filter the field they name, as Hull's search
        did: ``event_id`` finds connector-form events, ``_id`` raw-form ones, never both."""
        kind = next(iter(clause))
        if kind == "has_parent":
            return self._parent_predicate(clause)
        if kind == "range":
            field, bounds = range_of(clause)
            if field == "created_at":
                return lambda entry: in_range(entry[0], bounds)
            matches = _date_matcher(field, bounds)
            return lambda entry: matches(entry[3])
        if kind in ("terms", "term"):
            matches = field_matcher(*terms_of(clause))
            return lambda entry: matches(entry[3])
        raise QueryError(f"unsupported filter {kind!r} on events")

    def _event_query_predicate(self, query: Any):
        return query_predicate(query, self._event_clause_predicate)

    # -- firehose ------------------------------------------------------------------
    def _firehose(self, req: Request):
        self._authorize(req)
        body = req.json()
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            raise HttpError(400, {"message": 'body must be {"batch": [...]}'})
        if len(batch) > FIREHOSE_MAX_BATCH:
            raise HttpError(400, {"message": f"batch cannot contain more than {FIREHOSE_MAX_BATCH} messages"})
        # Verify every message before applying any: a bad token rejects the whole batch.
        verified = [self._verify_message(index, message) for index, message in enumerate(batch)]
        with self.lock:
            self.firehose_batches += 1
            for message, claims in verified:
                self._apply_message(message, claims)
        return 204, None

    def _verify_message(self, index: int, message: Any) -> tuple[dict, dict]:
        def invalid(reason: str) -> HttpError:
            return HttpError(400, {"message": f"invalid message {index}: {reason}"})

        def invalid_token(reason: str) -> HttpError:
            return HttpError(400, {"message": f"invalid token in message {index}: {reason}"})

        if not isinstance(message, dict):
            raise invalid("must be an object")
        message_type = message.get("type")
        if message_type not in FIREHOSE_TYPES:
            raise invalid(f"type must be one of {', '.join(FIREHOSE_TYPES)}")
        headers = message.get("headers")
        token = headers.get("Hull-Access-Token") if isinstance(headers, dict) else None
        if not isinstance(token, str) or not token:
            raise invalid_token("missing headers.Hull-Access-Token")
        try:
            claims = self._verify_token(token)
        except jwt.PyJWTError as exc:
            raise invalid_token(str(exc)) from None
        as_user = claims.get("io.hull.asUser")
        if not isinstance(as_user, dict) or not any(as_user.get(k) for k in IDENTITY_CLAIMS):
            raise invalid_token("io.hull.asUser needs one of id, external_id, email, anonymous_id")
        if claims.get("io.hull.subjectType") != "user":
            raise invalid_token('io.hull.subjectType must be "user"')
        body = message.get("body")
        if message_type in ("traits", "track") and not isinstance(body, dict):
            raise invalid("body must be an object")
        if message_type == "traits":
            for name, value in body.items():
                if isinstance(value, dict) and "operation" in value and value["operation"] not in TRAIT_OPERATIONS:
                    raise invalid(f"unknown operation for trait {name!r}")
        if message_type == "track" and not (isinstance(body.get("event"), str) and body["event"]):
            raise invalid("track body needs an event name")
        return message, claims

    def _verify_token(self, token: str) -> dict:
        """The token's claims, checked as `jwt.decode` checks them (signature, issuer, `iat` at
        most TOKEN_LEEWAY_SECONDS ahead). A token of the usual shape (PyJWT's HS256 header, only
        `_USUAL_CLAIMS`, an integer `iat`) whose signature matches is accepted here with `hmac`
        directly: PyJWT spends ~50 µs a token, which was most of this simulator's CPU in the
        drain benchmark. Every other token, and every one this path does not accept, goes
        through PyJWT, which gives the verdict and its error message."""
        header, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if header == _HS256_HEADER and signature and token.isascii():
            mac = hmac.new(self.connector_secret.encode("utf-8"), f"{header}.{payload}".encode("ascii"), hashlib.sha256)
            expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")
            if hmac.compare_digest(expected, signature):
                try:
                    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                except ValueError:
                    claims = None
                if (
                    isinstance(claims, dict)
                    and claims.keys() <= _USUAL_CLAIMS
                    and claims.get("iss") == self.connector_id
                    and type(claims.get("iat")) is int
                    and claims["iat"] <= time.time() + TOKEN_LEEWAY_SECONDS
                ):
                    return claims
        decoded: dict = jwt.decode(
            token,
            self.connector_secret,
            algorithms=["HS256"],
            issuer=self.connector_id,
            leeway=TOKEN_LEEWAY_SECONDS,
            options={"require": ["iss"], "verify_aud": False},
        )
        return decoded

    def _apply_message(self, message: dict, claims: dict) -> None:
        """Apply one verified message (lock held)."""
        message_type = message["type"]
        body = message.get("body")
        create = claims.get("io.hull.create", True) is not False
        record = {
            "type": message_type,
            "claims": claims,
            "body": body,
            "timestamp": message.get("timestamp"),
            "request_id": message.get("requestId"),
            "user_id": None,
        }
        if message_type == "traits":
            hull_id = record["user_id"] = self._resolve_user(claims, create)
            if hull_id is not None:
                user = self.users[hull_id]
                self._unindex_identity(user)  # traits may change the email
                for name, value in body.items():
                    self._apply_trait(user, name, value)
                self._index_identity(user)
                self._touch(user)
        elif message_type == "track":
            record["user_id"] = self._resolve_user(claims, create)
            event_id = body.get("event_id")
            if event_id is not None and event_id in self._tracked_ids:
                record["duplicate"] = True  # Hull deduplicates track events on event_id
            else:
                if event_id is not None:
                    self._tracked_ids.add(event_id)
                self.tracked_events.append(
                    {
                        "user_id": record["user_id"],
                        "as_user": claims["io.hull.asUser"],
                        "event": body["event"],
                        "event_id": event_id,
                        "body": body,
                        "timestamp": message.get("timestamp"),
                    }
                )
        # alias / unalias / incinerate are recorded only.
        self.firehose_messages.append(record)

    @staticmethod
    def _apply_trait(user: dict, name: str, value: Any) -> None:
        key = name if name in TOP_LEVEL_ATTRIBUTES or name.startswith("traits_") else f"traits_{name}"
        if isinstance(value, dict) and "operation" in value:
            operation, operand = value["operation"], value.get("value")
            current = user.get(key)
            if operation == "setIfNull":
                if current is None:
                    user[key] = operand
                return
            if operation in ("inc", "dec"):
                step = operand if isinstance(operand, (int, float)) else 1
                base = current if isinstance(current, (int, float)) else 0
                user[key] = base + step if operation == "inc" else base - step
                return
            value = operand
        user[key] = value

    def _resolve_user(self, claims: dict, create: bool) -> str | None:
        """Hull id for the claims: sub/id, then external_id, email, anonymous_id."""
        as_user = claims["io.hull.asUser"]
        for candidate in (claims.get("sub"), as_user.get("id")):
            if candidate in self.users:
                return self._merge_identity(candidate, as_user)
        for value, index in (
            (as_user.get("external_id"), self._by_external_id),
            (as_user.get("email"), self._by_email),
            (as_user.get("anonymous_id"), self._by_anonymous_id),
        ):
            if value is None:
                continue
            lookup = value.lower() if index is self._by_email else str(value)
            if lookup in index:
                return self._merge_identity(index[lookup], as_user)
        if not create:
            return None
        user = {"id": self._new_id()}
        if as_user.get("external_id") is not None:
            user["external_id"] = as_user["external_id"]
        if as_user.get("email"):
            user["email"] = as_user["email"]
        if as_user.get("anonymous_id"):
            user["anonymous_ids"] = [as_user["anonymous_id"]]
        return self.upsert_user(user)["id"]

    def _merge_identity(self, hull_id: str, as_user: dict) -> str:
        """Hull attaches claimed identifiers the user does not have yet."""
        user = self.users[hull_id]
        changes = {}
        if as_user.get("external_id") is not None and user.get("external_id") is None:
            changes["external_id"] = as_user["external_id"]
        if as_user.get("email") and not user.get("email"):
            changes["email"] = as_user["email"]
        anonymous_id = as_user.get("anonymous_id")
        if anonymous_id and anonymous_id not in (user.get("anonymous_ids") or ()):
            changes["anonymous_ids"] = [*(user.get("anonymous_ids") or ()), anonymous_id]
        if changes:
            self.upsert_user({"id": hull_id, **changes})
        return hull_id

    # -- control routes (seeding over HTTP) ------------------------------------------
    @staticmethod
    def _items(body: Any, key: str) -> list:
        if isinstance(body, dict) and isinstance(body.get(key), list):
            return body[key]
        if isinstance(body, list):
            return body
        if isinstance(body, dict):
            return [body]
        raise HttpError(400, {"message": f"expected an object, a list or {{{key!r}: [...]}}"})

    def _control_users(self, req: Request):
        users = self._items(req.json({}), "users")
        try:
            stored = [self.upsert_user(user) for user in users]
        except (ValueError, AttributeError) as exc:
            raise HttpError(400, {"message": str(exc)}) from None
        return 200, {"upserted": len(stored), "ids": [user["id"] for user in stored]}

    def _control_remove_user(self, req: Request, hull_id: str):
        self.remove_user(hull_id)
        return 200, {"ok": True}

    def _control_segments(self, req: Request):
        segments = self._items(req.json({}), "segments")
        try:
            for segment in segments:
                self.add_segment(segment["id"], segment["name"])
        except (KeyError, TypeError) as exc:
            raise HttpError(400, {"message": f"segments need id and name: {exc}"}) from None
        return 200, {"added": len(segments)}

    def _control_events(self, req: Request):
        events = self._items(req.json({}), "events")
        try:
            for event in events:
                if event.pop("raw", False) or "_id" in event or "props" in event:
                    self.add_raw_event(event)
                else:
                    self.add_event(event)
        except (ValueError, AttributeError) as exc:
            raise HttpError(400, {"message": str(exc)}) from None
        return 200, {"added": len(events)}

    def _control_advance(self, req: Request):
        body = req.json({})
        if "now" in body:
            try:
                self.now = datetime.fromtimestamp(parse_time(body["now"]), timezone.utc)
            except QueryError:
                raise HttpError(400, {"message": "now must be an ISO 8601 date"}) from None
        if "seconds" in body:
            self.advance(float(body["seconds"]))
        return 200, {"now": self.now.isoformat().replace("+00:00", "Z")}

    def _control_token(self, req: Request):
        body = req.json({})
        as_user = body.pop("as_user", None) if isinstance(body, dict) else None
        if not isinstance(as_user, dict):
            raise HttpError(400, {"message": "as_user is required"})
        return 200, {"token": self.user_token(as_user, **body)}


_EVENT_FIELDS = frozenset(
    {
        "event_id",
        "event",
        "created_at",
        "properties",
        "context",
        "user_id",
        "anonymous_id",
        "event_source",
        "event_type",
    }
)


def _slice_bounds(order: list, ranges: list[dict]) -> tuple[int, int]:
    """[low, high) of `order` (sorted by its first element) that every range query admits."""
    low, high = 0, len(order)
    for bounds in ranges:
        if "gte" in bounds:
            low = max(low, bisect_left(order, bounds["gte"], key=_first))
        if "gt" in bounds:
            low = max(low, bisect_right(order, bounds["gt"], key=_first))
        if "lte" in bounds:
            high = min(high, bisect_right(order, bounds["lte"], key=_first))
        if "lt" in bounds:
            high = min(high, bisect_left(order, bounds["lt"], key=_first))
    return low, high
