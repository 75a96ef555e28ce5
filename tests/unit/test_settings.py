"""Settings: region hosts, env fallbacks, secrets never printed."""

import pytest

from cio_sync.settings import (
    EU_TRACK_URL,
    US_TRACK_URL,
    ConnectorSettings,
    CustomerIoCredentials,
    HullCredentials,
    InvalidCredentialError,
    SettingsError,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in (
        "CUSTOMERIO_REGION",
        "CUSTOMERIO_TRACK_URL",
        "SYNCHRONIZED_SEGMENTS",
        "HULL_API_URL",
        "HULL_CONNECTOR_SECRET",
        "CUSTOMERIO_API_KEY",
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_WEBHOOK_SIGNING_KEY",
    ):
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


def test_credentials_are_stripped_when_loaded(monkeypatch):
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", " hull-secret-with-spaces\n")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "\tkey-from-a-mounted-file\r\n")
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", " site ")
    assert HullCredentials().connector_secret.get_secret_value() == "hull-secret-with-spaces"
    cio = CustomerIoCredentials()
    assert cio.api_key.get_secret_value() == "key-from-a-mounted-file" and cio.site_id == "site"


@pytest.mark.parametrize("value", ["abc\ndef-secret-value", "abc\x1bdef-secret-value", "abc\x7fdef-secret-value"])
def test_a_control_character_inside_a_credential_names_the_variable_not_the_value(monkeypatch, value):
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", value)
    with pytest.raises(InvalidCredentialError) as failure:
        HullCredentials()
    assert "HULL_CONNECTOR_SECRET" in str(failure.value) and "control character" in str(failure.value)
    assert "secret-value" not in str(failure.value) and "secret-value" not in repr(failure.value.args)
    assert isinstance(failure.value, SettingsError)


def test_non_ascii_in_a_header_credential_is_an_error(monkeypatch):
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "kéy-secret-value")
    with pytest.raises(InvalidCredentialError, match="CUSTOMERIO_API_KEY") as failure:
        CustomerIoCredentials()
    assert "secret-value" not in str(failure.value)


def test_a_blank_credential_is_missing_by_name(monkeypatch):
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", "  \n")
    assert "HULL_CONNECTOR_SECRET" in HullCredentials().missing()


def test_loaded_secrets_are_known_to_the_scrubber(monkeypatch):
    from cio_sync import redact

    monkeypatch.setenv("HULL_CONNECTOR_SECRET", " hull-secret-scrubbed\n")
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "cio-key-scrubbed")
    HullCredentials(), CustomerIoCredentials()
    assert redact.scrub("a hull-secret-scrubbed b cio-key-scrubbed c") == "a [redacted] b [redacted] c"
