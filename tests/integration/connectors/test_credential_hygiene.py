"""Credentials never leave with a redirect to another host, and a request that cannot be sent
never quotes a header (over real loopback HTTP)."""

from __future__ import annotations

import json

import pytest

from connectors.customerio import CustomerIoClient
from connectors.http import AuthError, RetryPolicy
from connectors.hull import HullClient
from tests.support.loopback import Recorder, serving

FAST = RetryPolicy(total=0, timeout=5)
SECRET = "hull-secret-never-forwarded-0001"
API_KEY = "cio-key-never-forwarded-0001"


@pytest.fixture
def servers():
    with serving(Recorder, Recorder) as started:
        yield started


def test_hull_headers_are_not_forwarded_to_another_host(servers):
    origin, other = servers
    target = f"http://localhost:{other.server_address[1]}/api/v1/users_segments"
    with HullClient(
        f"http://127.0.0.1:{origin.server_address[1]}",
        "http://127.0.0.1:9/",
        "acme.hullapp.io",
        "connector-id",
        SECRET,
        retry=FAST,
    ) as hull:
        hull.request("GET", f"/redirect?to={target}")
        # the same host keeps them (a redirect within Hull's own API)
        same = f"http://127.0.0.1:{origin.server_address[1]}/api/v1/other"
        hull.request("GET", f"/redirect?to={same}")
    ((_, forwarded),) = other.seen
    assert "hull-access-token" not in forwarded and "hull-app-id" not in forwarded
    assert SECRET not in json.dumps(forwarded)
    assert origin.seen[-1][1]["hull-access-token"] == SECRET  # followed on the same host with it


def test_customerio_basic_auth_is_not_forwarded_to_another_host(servers):
    origin, other = servers
    target = f"http://localhost:{other.server_address[1]}/api/v1/accounts/region"
    with CustomerIoClient(f"http://127.0.0.1:{origin.server_address[1]}", "site", API_KEY, retry=FAST) as cio:
        cio.request("GET", f"/redirect?to={target}")
    ((_, forwarded),) = other.seen
    assert "authorization" not in forwarded
    assert "authorization" in origin.seen[0][1]


@pytest.mark.parametrize("secret", [f" {SECRET}", f"{SECRET}\n", f"{SECRET}\r\nX-Injected: 1"])
def test_a_header_that_cannot_be_sent_never_quotes_the_secret(servers, secret):
    origin, _ = servers
    with HullClient(
        f"http://127.0.0.1:{origin.server_address[1]}",
        "http://127.0.0.1:9/",
        "acme.hullapp.io",
        "connector-id",
        secret,
        retry=FAST,
    ) as hull:  # as if it had bypassed the settings' check
        with pytest.raises(AuthError) as failure:
            hull.segments()
    text = f"{failure.value} {failure.value.args!r} {vars(failure.value)!r} {failure.value.__context__!r}"
    assert SECRET not in text and "InvalidHeader" in text and "HULL_CONNECTOR_SECRET" in text
    assert failure.value.__cause__ is None and failure.value.__context__ is None
    assert origin.seen == []  # nothing was sent


def test_a_redirect_loop_stops_with_a_clear_error_and_is_not_retried(servers):
    origin, _ = servers
    loop = f"http://127.0.0.1:{origin.server_address[1]}/redirect?to=/redirect"
    with CustomerIoClient(f"http://127.0.0.1:{origin.server_address[1]}", "site", API_KEY, retry=FAST) as cio:
        with pytest.raises(AuthError, match="TooManyRedirects") as failure:
            cio.request("GET", "/", url=loop)
    assert API_KEY not in str(failure.value)
    assert 2 <= len(origin.seen) <= 12  # followed a bounded number of times, then stopped
