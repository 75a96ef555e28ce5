"""The small subset of Elasticsearch query syntax that Hull's search API accepted
and that this project's connector uses.  Anything else is refused with a 400
so a client relying on unsupported syntax fails loudly in tests instead of
silently getting unfiltered results."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Callable

MAX_PER_PAGE = 100
MAX_RESULT_WINDOW = 10_000  # Elasticsearch's index.max_result_window


class QueryError(ValueError):
    """The search body cannot be honoured; answered 400 with this message."""


def filter_clauses(query: Any) -> list[dict]:
    """Flatten ``query`` into a list of leaf clauses that must all hold."""
    if query is None or query == {} or query == {"match_all": {}}:
        return []
    if not isinstance(query, dict) or len(query) != 1:
        raise QueryError(f"unsupported query: {query!r}")
    (kind, spec), = query.items()
    if kind == "match_all":
        return []
    if kind != "bool":
        return [query]
    if not isinstance(spec, dict):
        raise QueryError("bool query must be an object")
    unsupported = set(spec) - {"filter", "must"}
    if unsupported:
        raise QueryError(f"unsupported bool clauses: {sorted(unsupported)}")
    clauses: list[dict] = []
    for key in ("filter", "must"):
        value = spec.get(key)
        if value is None:
            continue
        for clause in value if isinstance(value, list) else [value]:
            clauses.extend(filter_clauses(clause))
    return clauses


def terms_of(clause: dict) -> tuple[str, set]:
    """``{"terms": {field: [..]}}`` or ``{"term": {field: v | {"value": v}}}`` → (field, values)."""
    (kind, spec), = clause.items()
    fields = {key: value for key, value in spec.items() if key != "boost"} \
        if isinstance(spec, dict) else {}
    if len(fields) != 1:
        raise QueryError(f"{kind} needs exactly one field")
    (field, values), = fields.items()
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
        parsed = datetime.fromisoformat(value)
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
    (field, bounds), = spec.items()
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
    return not (("gte" in bounds and epoch < bounds["gte"])
                or ("gt" in bounds and epoch <= bounds["gt"])
                or ("lte" in bounds and epoch > bounds["lte"])
                or ("lt" in bounds and epoch >= bounds["lt"]))


def sort_direction(sort: Any, field: str) -> str:
    """Accept ``{f: "asc"}``, ``{f: {"order": "asc"}}``, ``[...]`` or ``"f"``; only on ``field``."""
    if sort is None:
        return "asc"
    if isinstance(sort, list):
        if len(sort) != 1:
            raise QueryError(f"only one sort key ({field}) is supported")
        sort = sort[0]
    if isinstance(sort, str):
        sort = {sort: "asc"}
    if not isinstance(sort, dict) or set(sort) != {field}:
        raise QueryError(f"only sorting on {field} is supported")
    order = sort[field]
    if isinstance(order, dict):
        order = order.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"sort order must be asc or desc, got {order!r}")
    return order


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
    return items[start:start + per_page], {
        "page": page, "per_page": per_page,
        "pages": math.ceil(total / per_page), "total": total}
