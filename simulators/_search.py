"""The small subset of Elasticsearch query syntax that Hull's search API accepted
and that this project's connector uses.  Anything else is refused with a 400
so a client relying on unsupported syntax fails loudly in tests instead of
silently getting unfiltered results."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

MAX_PER_PAGE = 100
MAX_RESULT_WINDOW = 10_000  # Elasticsearch's index.max_result_window


class QueryError(ValueError):
    """The search body cannot be honoured; answered 400 with this message."""


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def split_query(query: Any) -> tuple[list[dict], list[Any]]:
    """Split ``query`` into (leaf clauses that must all hold, queries that must not match).

    ``filter``/``must`` are flattened recursively (a nested ``must_not`` still
    excludes); each ``must_not`` entry is kept whole, as it may be a bool itself.
    """
    if query is None or query == {}:
        return [], []
    if not isinstance(query, dict) or len(query) != 1:
        raise QueryError(f"unsupported query: {query!r}")
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return [], []
    if kind != "bool":
        return [query], []
    if not isinstance(spec, dict):
        raise QueryError("bool query must be an object")
    unsupported = set(spec) - {"filter", "must", "must_not"}
    if unsupported:
        raise QueryError(f"unsupported bool clauses: {sorted(unsupported)}")
    required: list[dict] = []
    excluded: list[Any] = list(_as_list(spec.get("must_not")))
    for key in ("filter", "must"):
        for clause in _as_list(spec.get(key)):
            clause_required, clause_excluded = split_query(clause)
            required.extend(clause_required)
            excluded.extend(clause_excluded)
    return required, excluded


def terms_of(clause: dict) -> tuple[str, set]:
    """``{"terms": {field: [..]}}`` or ``{"term": {field: v | {"value": v}}}`` → (field, values)."""
    ((kind, spec),) = clause.items()
    fields = {key: value for key, value in spec.items() if key != "boost"} if isinstance(spec, dict) else {}
    if len(fields) != 1:
        raise QueryError(f"{kind} needs exactly one field")
    ((field, values),) = fields.items()
    if kind == "term":
        if isinstance(values, dict):
            values = values.get("value")
        values = [values]
    if not isinstance(values, list):
        raise QueryError(f"terms on {field} must be a list")
    return field, {value for value in values if isinstance(value, (str, int, float, bool))}


def field_matcher(field: str, values: set) -> Callable[[dict], bool]:
    """Elasticsearch terms semantics: a list-valued field matches if any element does."""

    def matches(doc: dict) -> bool:
        value = doc.get(field)
        if isinstance(value, list):
            return any(item in values for item in value)
        return value in values

    return matches


def parse_time(value: Any) -> float:
    """ISO 8601 (``Z`` or offset; naive means UTC) → epoch seconds."""
    if not isinstance(value, str):
        raise QueryError(f"expected an ISO 8601 date, got {value!r}")
    try:
        # Python < 3.11 does not read a trailing "Z".
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise QueryError(f"expected an ISO 8601 date, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def range_of(clause: dict) -> tuple[str, dict[str, float]]:
    """``{"range": {field: {"gte": iso, ...}}}`` → (field, {op: epoch})."""
    spec = clause["range"]
    if not isinstance(spec, dict) or len(spec) != 1:
        raise QueryError("range needs exactly one field")
    ((field, bounds),) = spec.items()
    if not isinstance(bounds, dict):
        raise QueryError(f"range on {field} must be an object")
    parsed = {}
    for op, value in bounds.items():
        if op in ("gte", "gt", "lte", "lt"):
            parsed[op] = parse_time(value)
        elif op not in ("format", "time_zone", "boost"):
            raise QueryError(f"unsupported range operator {op!r}")
    return field, parsed


def in_range(epoch: float, bounds: dict[str, float]) -> bool:
    return not (
        ("gte" in bounds and epoch < bounds["gte"])
        or ("gt" in bounds and epoch <= bounds["gt"])
        or ("lte" in bounds and epoch > bounds["lte"])
        or ("lt" in bounds and epoch >= bounds["lt"])
    )


def _sort_entry(entry: Any) -> tuple[str, str]:
    if isinstance(entry, str):
        return entry, "asc"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise QueryError(f"unsupported sort {entry!r}")
    ((field, order),) = entry.items()
    if isinstance(order, dict):
        order = order.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"sort order must be asc or desc, got {order!r}")
    return field, order


def sort_direction(sort: Any, field: str, tie_breakers: tuple[str, ...]) -> str:
    """Direction of a sort on ``field``; results are always ordered (field, id).

    Accepts ``{f: "asc"}``, ``{f: {"order": "asc"}}``, ``"f"`` or a list of those,
    where the list may add the id tie-breaker the simulator applies anyway.
    """
    if sort is None:
        return "asc"
    entries = [_sort_entry(entry) for entry in (sort if isinstance(sort, list) else [sort])]
    if not entries or entries[0][0] != field:
        raise QueryError(f"only sorting on {field} is supported")
    direction = entries[0][1]
    for extra_field, extra_order in entries[1:]:
        if extra_field not in tie_breakers or extra_order != direction:
            raise QueryError(f"only {field} then {'/'.join(tie_breakers)} in the same direction can be sorted on")
    return direction


def page_params(body: dict, query: dict) -> tuple[int, int]:
    """Validate ``page``/``per_page`` (body first, then query string)."""
    try:
        page = int(body.get("page", query.get("page", 1)))
        per_page = int(body.get("per_page", query.get("per_page", 10)))
    except (TypeError, ValueError):
        raise QueryError("page and per_page must be integers") from None
    if page < 1 or per_page < 1:
        raise QueryError("page and per_page must be positive")
    if per_page > MAX_PER_PAGE:
        raise QueryError(f"per_page cannot be more than {MAX_PER_PAGE}")
    if page * per_page > MAX_RESULT_WINDOW:
        raise QueryError("Result window is too large")
    return page, per_page


def paginate(items: list, page: int, per_page: int) -> tuple[list, dict]:
    total = len(items)
    start = (page - 1) * per_page
    return items[start : start + per_page], {
        "page": page,
        "per_page": per_page,
        "pages": math.ceil(total / per_page),
        "total": total,
    }
