"""The clients go through the proxy the environment names (and around it for NO_PROXY), over
real loopback HTTP: a forwarding proxy in front of a recording origin."""

from __future__ import annotations

import base64

import pytest

from connectors.customerio import CustomerIoClient
from connectors.http import RetryPolicy
from tests.support.loopback import ForwardingProxy, Recorder, serving

FAST = RetryPolicy(total=0, timeout=5)


@pytest.fixture
def origin_and_proxy():
    with serving(Recorder, ForwardingProxy) as started:
        yield started


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("no_proxy", "")


def test_requests_go_through_the_proxy_with_its_credentials_kept_from_the_service(origin_and_proxy, monkeypatch):
    origin, proxy = origin_and_proxy
    monkeypatch.setenv("http_proxy", f"http://proxy-user:proxy%20pass@127.0.0.1:{proxy.server_address[1]}")
    base = f"http://127.0.0.1:{origin.server_address[1]}"

    with CustomerIoClient(base, "site", "key", retry=FAST) as cio:
        assert cio.check_credentials() == []  # the recording origin's answer, relayed

    ((proxied_path, proxy_headers),) = proxy.seen
    assert proxied_path == f"{base}/api/v1/accounts/region"  # absolute form: a proxied request
    assert proxy_headers["proxy-authorization"] == "Basic " + base64.b64encode(b"proxy-user:proxy pass").decode()
    ((path, headers),) = origin.seen
    assert path == "/api/v1/accounts/region"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"site:key").decode()
    assert "proxy-authorization" not in headers


def test_no_proxy_hosts_are_reached_directly(origin_and_proxy, monkeypatch):
    origin, proxy = origin_and_proxy
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    with CustomerIoClient(f"http://127.0.0.1:{origin.server_address[1]}", "site", "key", retry=FAST) as cio:
        cio.check_credentials()

    assert proxy.seen == [] and len(origin.seen) == 1
