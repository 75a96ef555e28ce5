"""Settings: region hosts, env fallbacks, secrets never printed."""

import pytest

from cio_sync.settings import (
    EU_TRACK_URL,
    US_TRACK_URL,
    ConnectorSettings,
    CustomerIoCredentials,
    HullCredentials,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in ("CUSTOMERIO_REGION", "CUSTOMERIO_TRACK_URL", "SYNCHRONIZED_SEGMENTS", "HULL_API_URL"):
        monkeypatch.delenv(key, raising=False)


def test_region_chooses_the_track_host(monkeypatch):
    assert CustomerIoCredentials().base_url == US_TRACK_URL
    monkeypatch.setenv("CUSTOMERIO_REGION", "EU")
    assert CustomerIoCredentials().base_url == EU_TRACK_URL == "https://track-eu.customer.io"
    monkeypatch.setenv("CUSTOMERIO_TRACK_URL", "http://127.0.0.1:9/")
    assert CustomerIoCredentials().base_url == "http://127.0.0.1:9"


def test_eu_client_targets_the_eu_host(monkeypatch):
    from connectors.customerio import CustomerIoClient

    monkeypatch.setenv("CUSTOMERIO_REGION", "eu")
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "s")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "k")
    client = CustomerIoClient.from_settings(CustomerIoCredentials())
    assert client.url("/api/v1/customers/x") == "https://track-eu.customer.io/api/v1/customers/x"


def test_hull_base_url(monkeypatch):
    monkeypatch.setenv("HULL_ORGANIZATION", "acme.hullapp.io")
    assert HullCredentials().base_url == "https://acme.hullapp.io/api/v1"
    monkeypatch.setenv("HULL_API_URL", "http://127.0.0.1:9100/api/v1/")
    assert HullCredentials().base_url == "http://127.0.0.1:9100/api/v1"


def test_parameters_override_environment_lists_as_json(monkeypatch):
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["seg1", "seg2"]')
    monkeypatch.setenv("ENABLE_USER_DELETION", "true")
    assert ConnectorSettings.resolve().synchronized_segments == ["seg1", "seg2"]
    assert ConnectorSettings.resolve().enable_user_deletion is True
    assert ConnectorSettings.resolve(synchronized_segments=["x"]).synchronized_segments == ["x"]
    assert ConnectorSettings.resolve().max_attributes_per_call == 30


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "super-secret-key")
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", "hull-secret")
    assert "super-secret-key" not in repr(CustomerIoCredentials())
    assert "hull-secret" not in str(HullCredentials())
