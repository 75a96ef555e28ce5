"""The transport reads the environment as requests did per request: the same proxy, CA bundle
and netrc credentials for each origin (requests' own merge is the reference). No HTTP."""

from __future__ import annotations

import base64

import certifi
import pytest
import requests
import urllib3

from connectors.customerio import CustomerIoClient
from connectors.hull import HullClient
from connectors.transport import Transport, Unsendable, basic_auth, read_environment

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


def requests_would_use(url: str, auth=None) -> tuple:
    """What a plain requests.Session used for a request to `url`: proxy, verify, Authorization."""
    session = requests.Session()
    session.auth = auth
    settings = session.merge_environment_settings(url, {}, None, None, None)
    prepared = session.prepare_request(requests.Request("GET", url))
    proxy = requests.utils.select_proxy(url, settings["proxies"])
    verify = settings["verify"]
    return proxy, (certifi.where() if verify is True else verify), prepared.headers.get("Authorization")


def transport_uses(url: str, auth=None) -> tuple:
    environment = read_environment(url, has_auth=auth is not None)
    authorization = basic_auth(*auth) if auth else None
    if environment.netrc_auth is not None:
        authorization = basic_auth(*environment.netrc_auth)
    return environment.proxy, environment.ca_bundle, authorization


@pytest.mark.parametrize("url", ["https://track.customer.io/api/v1/customers/u-1", "http://127.0.0.1:9200/x"])
def test_proxies_and_ca_bundle_are_those_requests_would_use(monkeypatch, url):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3129")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate.pem")

    assert transport_uses(url) == requests_would_use(url)
    assert transport_uses(url)[0] and transport_uses(url)[1] == "/etc/ssl/corporate.pem"


def test_no_proxy_host_goes_direct(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "track.customer.io")
    url = "https://track.customer.io/api/v2/batch"

    assert transport_uses(url) == requests_would_use(url)
    assert transport_uses(url)[0] is None


def test_hosts_resolving_differently_each_get_their_own(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "acme.hullapp.io")
    transport = Transport({})
    direct, _ = transport._manager("https://acme.hullapp.io/api/v1/search/user_reports")
    proxied, _ = transport._manager("https://firehose.hullapp.io/")

    assert type(direct) is urllib3.PoolManager
    assert isinstance(proxied, urllib3.ProxyManager) and proxied.proxy.host == "proxy.internal"
    for url in ("https://acme.hullapp.io/api/v1", "https://firehose.hullapp.io/"):
        assert transport_uses(url) == requests_would_use(url)
    transport.close()


def test_proxy_credentials_become_a_proxy_authorization_header(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy.internal:3128")
    transport = Transport({})
    manager, headers = transport._manager("https://track.customer.io/api/v1/customers/1")

    assert isinstance(manager, urllib3.ProxyManager)
    expected = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert manager.proxy_headers == {"proxy-authorization": expected}
    assert "Proxy-Authorization" not in headers  # never sent to the service itself
    transport.close()


def test_netrc_credentials_apply_only_where_requests_applied_them(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine acme.hullapp.io login hull-user password hull-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = "https://acme.hullapp.io/api/v1/search/user_reports"

    assert transport_uses(url) == requests_would_use(url)
    assert transport_uses(url)[2].startswith("Basic ")
    _, headers = Transport({"Hull-Access-Token": "t"})._manager(url)
    assert headers["Authorization"] == basic_auth("hull-user", "hull-pass")

    # a client with credentials of its own keeps them, as before
    assert transport_uses(url, ("site", "key")) == requests_would_use(url, ("site", "key"))
    _, headers = Transport({"Authorization": basic_auth("site", "key")})._manager(url)
    assert headers["Authorization"] == basic_auth("site", "key")


def test_the_clients_send_their_credentials_with_every_request():
    cio = CustomerIoClient("https://track.customer.io", "site", "key")
    hull = HullClient(
        "https://acme.hullapp.io/api/v1",
        "https://firehose.hullapp.io",
        "acme.hullapp.io",
        "5bd329d5e2bcf3eeaf000001",
        "secret-0123456789abcdef0123456789abcdef",
    )
    try:
        assert cio.transport.headers["Authorization"] == "Basic " + base64.b64encode(b"site:key").decode()
        assert hull.transport.headers["Hull-Access-Token"] == "secret-0123456789abcdef0123456789abcdef"
        # and never forward them on a redirect to another origin
        assert "authorization" in cio.transport.retries.remove_headers_on_redirect
        hull_credentials = {"authorization", "hull-access-token", "hull-app-id", "hull-organization"}
        assert hull_credentials <= hull.transport.retries.remove_headers_on_redirect
    finally:
        cio.close()
        hull.close()


@pytest.mark.parametrize("value", [" secret", "secret\n", "secret\r\nX-Injected: 1", "sécret€"])
def test_a_header_that_cannot_be_sent_is_refused_without_its_value(value):
    transport = Transport({"Hull-Access-Token": value})
    with pytest.raises(Unsendable) as refused:
        transport.send("GET", "http://127.0.0.1:9/")
    assert "secret" not in f"{refused.value} {refused.value.args!r}" and "cret" not in refused.value.reason
    assert refused.value.__context__ is None


def test_an_unreadable_ca_bundle_is_named_before_anything_is_sent(monkeypatch, tmp_path):
    missing = tmp_path / "corporate.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(missing))
    transport = Transport({"Authorization": basic_auth("site", "secret-key")})
    with pytest.raises(Unsendable) as refused:
        transport.send("GET", "https://track.customer.io/api/v1/accounts/region")
    assert str(missing) in refused.value.reason and "REQUESTS_CA_BUNDLE" in refused.value.reason
    assert "secret-key" not in str(refused.value)
