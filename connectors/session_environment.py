"""Read the environment once per client instead of once per request.

With `trust_env` on (the default), `requests` looks at the environment on every request: it
scans every environment variable twice for `*_proxy` settings, checks `NO_PROXY`, the CA bundle
variables and, for a session without auth, `~/.netrc`. That is about a quarter of a
millisecond of CPU per call here, a fifth of the client's whole cost of a Customer.io call,
spent in the sender threads where it also holds the GIL. The environment does not change
while a client lives, so `pin_environment` resolves it once, for the hosts the client talks
to, and turns the per-request lookups off. The effective proxies, CA bundle and netrc
credentials are exactly those `requests` would have used, or the session is left as it was
(when the client's hosts would resolve differently, e.g. one of them is in `NO_PROXY`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import requests
from requests.utils import get_environ_proxies, get_netrc_auth


def pin_environment(session: requests.Session, urls: Iterable[str]) -> bool:
    """Applies to `session` what `requests` would read from the environment for each of `urls`
    and turns `trust_env` off; returns False (session untouched) when the URLs disagree."""
    if not session.trust_env:
        return False
    resolved = set()
    for url in urls:
        proxies = tuple(sorted(get_environ_proxies(url).items()))
        # requests consults ~/.netrc only for a request without auth, on a session without auth.
        netrc = None if session.auth else get_netrc_auth(url)
        resolved.add((proxies, netrc))
    if len(resolved) != 1:
        return False
    ((proxies, netrc),) = resolved
    # Per-request environment proxies won over the session's own; so they do here.
    session.proxies = {**session.proxies, **dict(proxies)}
    # Per request, requests replaced `verify` by a CA bundle variable whenever one was set.
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    if netrc is not None:
        session.auth = netrc
    session.trust_env = False
    return True
