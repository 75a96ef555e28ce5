"""Synthetic, realistic Hull data for tests and benchmarks.

Deterministic for a given ``seed``.  Built for volume (100k users in a few
seconds): random draws are bare ``random()`` calls into small pools, traits
come from a pool of pre-generated trait profiles (plus a few per-user unique
traits), and accounts are shared dicts.  Sharing is safe because the Hull
simulator never mutates nested values in place (see hull.py).

Importing this module (``import simulators`` does) adds ``POST /_sim/seed`` to every
Hull simulator created afterwards; hull.py itself knows nothing about seeding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import combinations
from random import Random

from ._server import HttpError, Request
from .hull import HullSimulator, iso_seconds

DEFAULT_SEGMENTS = (
    ("seg-vip", "VIP"),
    ("seg-trial", "Trial"),
    ("seg-churn", "Churn Risk"),
    ("seg-other", "Not synced"),
)

FIRST_NAMES = (
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Guido",
    "Hedy",
    "Edsger",
    "Radia",
    "Tim",
    "Katherine",
    "Niklaus",
    "Élodie",
    "José",
    "Zoë",
    "Søren",
    "Mei",
    "Ravi",
    "Amara",
    "Yuki",
)
LAST_NAMES = (
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "van Rossum",
    "Lamarr",
    "Dijkstra",
    "Perlman",
    "Berners-Lee",
    "Johnson",
    "Wirth",
    "Dubois",
    "García",
    "Nakamura",
    "Okafor",
)
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "proton.me")
COMPANY_WORDS = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Gringotts",
    "Vandelay",
    "Pied Piper",
)
PLANS = ("free", "starter", "pro", "business", "enterprise")
TITLES = (
    "Banana Stand Owner",
    "CTO",
    "Head of Growth",
    "Engineer",
    "Founder",
    "VP Sales",
    "Marketing Manager",
    "Data Analyst",
)
LEAD_STATUSES = ("Potential", "Qualified", "Customer", "Bad Fit")
TAGS = ("beta", "newsletter", "webinar", "partner", "high-intent", "churned-once", "referral")
SOURCES = ("organic", "ads", "referral", "partner", "event")
COUNTRIES = ("US", "FR", "DE", "GB", "JP", "BR", "IN", "NG")
CITIES = ("New York", "Paris", "Berlin", "London", "Tokyo", "São Paulo", "Bengaluru", "Lagos")
LANGUAGES = ("en", "fr", "de", "ja", "pt", "hi")
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-1000", "1000+")
ROLES = ("admin", "member", "owner", "viewer")
CAMPAIGNS = ("black-friday", "spring-launch", "retargeting", "webinar-q3")
TIMEZONES = ("America/New_York", "Europe/Paris", "Europe/Berlin", "Asia/Tokyo", "UTC")
COLORS = ("red", "green", "blue", "purple", "orange")
PAGES = ("/", "/pricing", "/features", "/blog/launch", "/docs/getting-started", "/signup")
REFERRERS = ("https://google.com", "https://twitter.com", "https://news.ycombinator.com", None)
USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36",
)
DAY = 86_400
PROFILE_POOL_SIZE = 4096
# Traits that must differ per user; every other trait comes from the profile pool.
PER_USER_TRAITS = frozenset({"traits_referral_code", "traits_stripe/customer_id"})


def _trait_makers(rng: Random, now: int) -> list[tuple[str, Callable[[int], object]]]:
    """(trait name, maker(user number) → value) pairs, mixed types like a real workspace."""
    r = rng.random

    def pick(pool):
        size = len(pool)
        return lambda n: pool[int(r() * size)]

    def integer(low, high):
        span = high - low + 1
        return lambda n: low + int(r() * span)

    def flag(probability):
        return lambda n: r() < probability

    def date(days_back):  # negative: a date in the future
        return lambda n: iso_seconds(now - int(r() * days_back * DAY))

    def maybe_none(maker, probability):
        return lambda n: None if r() < probability else maker(n)

    def tags(n):
        start = int(r() * len(TAGS))
        return list(TAGS[start : start + 1 + int(r() * 3)])

    return [
        ("traits_plan", pick(PLANS)),
        ("traits_coconuts", integer(0, 500)),
        ("traits_lifetime_value", lambda n: round(r() * 5000, 2)),
        ("traits_is_active", flag(0.8)),
        ("traits_last_order_at", date(365)),
        ("traits_closeio/title", pick(TITLES)),
        ("traits_closeio/lead_status", pick(LEAD_STATUSES)),
        ("traits_tags", tags),
        ("traits_signup_source", pick(SOURCES)),
        ("traits_country", pick(COUNTRIES)),
        ("traits_city", pick(CITIES)),
        ("traits_language", pick(LANGUAGES)),
        ("traits_orders_count", integer(0, 80)),
        ("traits_newsletter_opt_in", flag(0.6)),
        ("traits_nps_score", integer(0, 10)),
        ("traits_trial_ends_at", date(-30)),
        ("traits_last_login_at", date(60)),
        ("traits_company_size", pick(COMPANY_SIZES)),
        ("traits_role", pick(ROLES)),
        ("traits_referral_code", lambda n: f"REF{n:07d}"),
        ("traits_utm_campaign", maybe_none(pick(CAMPAIGNS), 0.4)),
        ("traits_timezone", pick(TIMEZONES)),
        ("traits_stripe/mrr", integer(0, 2000)),
        ("traits_stripe/customer_id", lambda n: f"cus_{n:08d}"),
        ("traits_phone_verified_at", maybe_none(date(400), 0.7)),
        ("traits_favorite_color", pick(COLORS)),
        ("traits_zendesk/open_tickets", integer(0, 5)),
        ("traits_score", lambda n: round(r() * 100, 1)),
    ]


def _accounts(rng: Random, now: int, count: int) -> list[dict]:
    accounts = []
    for k in range(count):
        word = COMPANY_WORDS[k % len(COMPANY_WORDS)]
        name = f"{word} {k // len(COMPANY_WORDS) + 1}"
        domain = f"{word.lower().replace(' ', '')}{k}.example.com"
        accounts.append(
            {
                "id": f"{rng.getrandbits(96):024x}",
                "domain": domain,
                "name": name,
                "closeio/name": name,
                "clearbit/employees": 5 + int(rng.random() * 5000),
                "updated_at": iso_seconds(now - int(rng.random() * 90 * DAY)),
            }
        )
    return accounts


def seed_synthetic(
    hull_sim: HullSimulator,
    n_users: int,
    *,
    seed: int = 0,
    segments=DEFAULT_SEGMENTS,
    attributes_per_user: int = 25,
    events_per_user: tuple[int, int] = (0, 3),
    users_per_tick: int = 150,
    first_number: int = 1,
) -> dict:
    """Add ``n_users`` users (external ids ``u-<first_number>``...) with segments and events.

    The simulator clock advances one second every ``users_per_tick`` users, so
    ``indexed_at`` values are shared by many users and ties cross page
    boundaries of 100.  Returns a summary.
    """
    started = time.perf_counter()
    rng = Random(seed)
    r = rng.random
    segment_ids = [segment_id for segment_id, _ in segments]
    low_events, high_events = events_per_user
    events_added = 0
    with hull_sim.lock:
        for segment_id, name in segments:
            hull_sim.add_segment(segment_id, name)
        now = int(hull_sim.now.timestamp())
        makers = _trait_makers(rng, now)
        extra = attributes_per_user - len(makers)
        makers = makers[:attributes_per_user] + [
            (f"traits_custom_{k}", lambda n, k=k: (n * 31 + k) % 1000) for k in range(max(0, extra))
        ]
        per_user = [(name, make) for name, make in makers if name in PER_USER_TRAITS]
        profiles = [
            {name: make(p) for name, make in makers if name not in PER_USER_TRAITS}
            for p in range(max(1, min(n_users, PROFILE_POOL_SIZE)))
        ]
        memberships = [list(combo) for size in (1, 2, 3) for combo in combinations(segment_ids, size)] or [[]]
        accounts = _accounts(rng, now, max(1, min(1000, n_users // 20)))
        first_indexed_at = hull_sim.now
        for offset in range(n_users):
            if offset and offset % users_per_tick == 0:
                hull_sim.advance(1)
                now += 1
            n = first_number + offset
            first = FIRST_NAMES[int(r() * len(FIRST_NAMES))]
            last = LAST_NAMES[int(r() * len(LAST_NAMES))]
            account = accounts[int(r() * len(accounts))]
            domain = account["domain"] if r() < 0.7 else FREE_MAIL[int(r() * len(FREE_MAIL))]
            email = f"{first.lower()}.{last.lower().replace(' ', '')}{n}@{domain}"
            created = now - int(r() * 3 * 365 * DAY)
            hull_id = f"{rng.getrandbits(96):024x}"
            user = {
                "id": hull_id,
                "email": email,
                "external_id": f"u-{n}",
                "anonymous_ids": [f"web:{n}"],
                "name": f"{first} {last}",
                "first_name": first,
                "last_name": last,
                "domain": domain,
                "created_at": iso_seconds(created),
                "last_seen_at": iso_seconds(now - int(r() * 30 * DAY)),
                "segment_ids": list(memberships[int(r() * len(memberships))]),
                "account": account,
            }
            user.update(profiles[int(r() * len(profiles))])
            for name, make in per_user:
                user[name] = make(n)
            hull_sim.upsert_user(user)
            for _ in range(low_events + int(r() * (high_events - low_events + 1))):
                hull_sim.add_event(_event(rng, hull_id, n, now, created))
                events_added += 1
        last_indexed_at = hull_sim.now
    return {
        "users": n_users,
        "events": events_added,
        "segments": segment_ids,
        "external_ids": [f"u-{first_number}", f"u-{first_number + n_users - 1}"],
        "indexed_at_from": iso_seconds(first_indexed_at.timestamp()),
        "indexed_at_to": iso_seconds(last_indexed_at.timestamp()),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _event(rng: Random, hull_id: str, n: int, now: int, created: int) -> dict:
    r = rng.random
    roll = r()
    at = iso_seconds(now - int(r() * min(30 * DAY, now - created)))
    page = PAGES[int(r() * len(PAGES))]
    url = f"https://example.com{page}"
    referrer = REFERRERS[int(r() * len(REFERRERS))]
    context = {
        "page_url": url,
        "referrer_url": referrer,
        "ip": f"10.{n % 256}.{(n >> 8) % 256}.{int(r() * 255)}",
        "useragent": USER_AGENTS[n % len(USER_AGENTS)],
    }
    if roll < 0.5:
        name, properties = "page", {"url": url, "referrer": referrer}
    elif roll < 0.8:
        name, properties = (
            "Order Completed",
            {"order_id": f"o-{rng.getrandbits(32):08x}", "revenue": round(5 + r() * 495, 2), "currency": "USD"},
        )
    else:
        name, properties = (
            "Signed Up",
            {"plan": PLANS[int(r() * len(PLANS))], "source": SOURCES[int(r() * len(SOURCES))]},
        )
    return {
        "event_id": f"{rng.getrandbits(128):032x}",
        "event": name,
        "created_at": at,
        "properties": properties,
        "context": context,
        "user_id": hull_id,
        "anonymous_id": f"web:{n}",
        "event_source": "track",
        "event_type": "track",
    }


def _control_seed(hull_sim: HullSimulator, req: Request):
    """``POST /_sim/seed {"n_users": N, ...seed_synthetic keyword arguments}``."""
    body = req.json({})
    if not isinstance(body, dict):
        raise HttpError(400, {"message": "expected an object"})
    body = dict(body)
    try:
        n_users = int(body.pop("n_users", 0))
    except (TypeError, ValueError):
        raise HttpError(400, {"message": "n_users must be an integer"}) from None
    if "segments" in body:
        body["segments"] = tuple(tuple(pair) for pair in body["segments"])
    if "events_per_user" in body:
        body["events_per_user"] = tuple(body["events_per_user"])
    try:
        return 200, seed_synthetic(hull_sim, n_users, **body)
    except TypeError as exc:
        raise HttpError(400, {"message": str(exc)}) from None


HullSimulator.add_control_route("POST", r"/_sim/seed", _control_seed)
