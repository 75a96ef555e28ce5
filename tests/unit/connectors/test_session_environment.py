"""A pinned session sends exactly what requests would have sent with its per-request lookups:
same proxies, same CA bundle, same netrc credentials (no HTTP: requests' own preparation and
environment merge are compared)."""

from __future__ import annotations

import pytest
import requests

from connectors.customerio import CustomerIoClient
from connectors.hull import HullClient
from connectors.session_environment import pin_environment

ENVIRONMENT = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NETRC",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no developer ~/.netrc


def effective(session: requests.Session, url: str) -> tuple:
    """What requests uses for a request to `url`: proxies, verify, Authorization header."""
    settings = session.merge_environment_settings(url, {}, None, None, None)
    prepared = session.prepare_request(requests.Request("GET", url))
    return dict(settings["proxies"]), settings["verify"], prepared.headers.get("Authorization")


def pinned(urls: list[str], auth=None) -> tuple[requests.Session, bool]:
    session = requests.Session()
    session.auth = auth
    return session, pin_environment(session, urls)


def reference(auth=None) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


@pytest.mark.parametrize("url", ["https://track.customer.io/api/v1/customers/u-1", "http://127.0.0.1:9200/x"])
def test_proxies_and_ca_bundle_are_those_requests_would_use(monkeypatch, url):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3129")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate.pem")

    session, done = pinned([url])

    assert done and session.trust_env is False
    assert effective(session, url) == effective(reference(), url)
    assert effective(session, url)[0]  # the proxies are really there
    assert effective(session, url)[1] == "/etc/ssl/corporate.pem"


def test_no_proxy_host_stays_without_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "track.customer.io")
    url = "https://track.customer.io/api/v2/batch"

    session, done = pinned([url])

    assert done
    assert effective(session, url) == effective(reference(), url)
    assert not effective(session, url)[0].get("https")


def test_hosts_resolving_differently_leave_the_session_as_it_was(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "acme.hullapp.io")
    urls = ["https://acme.hullapp.io/api/v1", "https://firehose.hullapp.io/"]

    session, done = pinned(urls)

    assert not done and session.trust_env is True and session.proxies == {}
    for url in urls:
        assert effective(session, url) == effective(reference(), url)


def test_netrc_credentials_apply_only_where_requests_applied_them(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine acme.hullapp.io login hull-user password hull-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = "https://acme.hullapp.io/api/v1/search/user_reports"

    without_auth, done = pinned([url])
    assert done and effective(without_auth, url) == effective(reference(), url)
    assert effective(without_auth, url)[2].startswith("Basic ")

    with_auth, done = pinned([url], auth=("site", "key"))  # the session's own auth wins, as before
    assert done and effective(with_auth, url) == effective(reference(("site", "key")), url)


def test_the_clients_pin_their_sessions():
    cio = CustomerIoClient("https://track.customer.io", "site", "key")
    hull = HullClient(
        "https://acme.hullapp.io/api/v1",
        "https://firehose.hullapp.io",
        "acme.hullapp.io",
        "5bd329d5e2bcf3eeaf000001",
        "secret-0123456789abcdef0123456789abcdef",
    )
    try:
        assert cio.session.trust_env is False and hull.session.trust_env is False
        assert cio.session.auth == ("site", "key")
    finally:
        cio.close()
        hull.close()
