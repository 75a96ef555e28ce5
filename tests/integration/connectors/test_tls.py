"""HTTPS as production uses it (Customer.io and Hull are HTTPS only), over loopback: the client
verifies the certificate and the host name, against the CA bundle the environment names."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.customerio import CustomerIoClient
from connectors.http import RetryPolicy, TransientError
from tests.support.loopback import Recorder, serving

FAST = RetryPolicy(total=0, timeout=5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for `localhost` only (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def https_origin(certificate, monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with serving(Recorder, tls=certificate) as (server,):
        yield server


def test_a_certificate_from_the_named_ca_bundle_is_trusted(https_origin, certificate, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
    with CustomerIoClient(f"https://localhost:{https_origin.server_address[1]}", "site", "key", retry=FAST) as cio:
        assert cio.check_credentials() == []
    ((path, headers),) = https_origin.seen
    assert path == "/api/v1/accounts/region" and headers["authorization"].startswith("Basic ")


def test_an_unknown_certificate_is_refused_before_anything_is_sent(https_origin):
    # No bundle named: certifi's, which does not know this self-signed certificate.
    with CustomerIoClient(f"https://localhost:{https_origin.server_address[1]}", "site", "key", retry=FAST) as cio:
        with pytest.raises(TransientError, match="SSLError"):
            cio.check_credentials()
    assert https_origin.seen == []


def test_a_certificate_for_another_host_name_is_refused(https_origin, certificate, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
    # Trusted certificate, but it names `localhost`, not the address asked for.
    with CustomerIoClient(f"https://127.0.0.1:{https_origin.server_address[1]}", "site", "key", retry=FAST) as cio:
        with pytest.raises(TransientError, match="SSLError"):
            cio.check_credentials()
    assert https_origin.seen == []
