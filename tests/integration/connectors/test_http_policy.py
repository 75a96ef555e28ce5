"""The one retry/error policy of the connector clients, against the Customer.io simulator."""

import time

import pytest

from connectors.customerio import CustomerIoClient
from connectors.http import AuthError, PermanentError, RetryPolicy, TransientError
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID

FAST = RetryPolicy(total=3, backoff_factor=0.01, backoff_jitter=0.0, timeout=2)


@pytest.fixture
def client(cio_sim):
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, CIO_API_KEY, retry=FAST) as c:
        yield c


def puts(cio_sim):
    return [e for e in cio_sim.journal() if e["method"] == "PUT"]


def test_transient_errors_are_retried_until_success(client, cio_sim):
    cio_sim.faults.fail_next(2, status=503)
    client.identify("u-1", {"email": "a@b.c"})
    assert [e["status"] for e in puts(cio_sim)] == [503, 503, 200]


def test_429_honours_retry_after(client, cio_sim):
    cio_sim.faults.fail_next(1, status=429, retry_after=1)
    started = time.monotonic()
    client.identify("u-1", {"email": "a@b.c"})
    assert time.monotonic() - started >= 0.9
    assert [e["status"] for e in puts(cio_sim)] == [429, 200]


def test_dropped_connections_are_retried(client, cio_sim):
    cio_sim.faults.fail_next(1, drop=True)
    client.identify("u-1", {"email": "a@b.c"})
    assert cio_sim.people["u-1"]["email"] == "a@b.c"


def test_400_is_not_retried(client, cio_sim):
    with pytest.raises(PermanentError, match="cannot be longer than 1000 bytes"):
        client.identify("u-1", {"bio": "x" * 1001})
    assert len(puts(cio_sim)) == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_body_json_cannot_carry_fails_that_request_only(client, cio_sim, value):
    with pytest.raises(PermanentError, match="not JSON"):
        client.identify("u-1", {"score": value})
    assert puts(cio_sim) == []  # nothing sent; the client goes on working
    client.identify("u-2", {"score": 1})
    assert cio_sim.people["u-2"]["score"] == 1


def test_401_is_fatal_and_names_the_settings(cio_sim):
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, "wrong-secret-key", retry=FAST) as c:
        with pytest.raises(AuthError) as failure:
            c.identify("u-1", {"email": "a@b.c"})
    assert "CUSTOMERIO_API_KEY" in str(failure.value)
    assert "wrong-secret-key" not in str(failure.value)
    assert len(puts(cio_sim)) == 1


def test_budget_spent_raises_transient(client, cio_sim):
    cio_sim.faults.down(True)
    with pytest.raises(TransientError, match="503"):
        client.identify("u-1", {"email": "a@b.c"})
    assert len(puts(cio_sim)) == FAST.total + 1
