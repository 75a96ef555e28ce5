"""The one scrubber: known credential values never reach a message."""

import io
import logging

import pytest

from cio_sync import redact
from cio_sync.redact import REDACTED


@pytest.fixture(autouse=True)
def no_known_secrets():
    redact.forget_all()
    yield
    redact.forget_all()


def test_scrub_replaces_every_known_value_and_its_url_encoded_form():
    redact.register("s3cr3t/value", None, "")
    assert redact.scrub("key=s3cr3t/value, again s3cr3t%2Fvalue") == f"key={REDACTED}, again {REDACTED}"
    assert redact.scrub("nothing here") == "nothing here"


def test_short_values_are_not_registered():
    redact.register("abc")
    assert redact.scrub("abc abc") == "abc abc"


def test_basic_auth_token_is_a_credential():
    redact.register_basic_auth("site", "api-key-1")
    assert redact.scrub("Authorization: Basic c2l0ZTphcGkta2V5LTE=") == f"Authorization: Basic {REDACTED}"


def test_scrub_obj_walks_tables():
    redact.register("topsecret")
    table = [{"metric": "error", "value": "401 for topsecret"}, {"topsecret": ("x", "topsecret")}]
    assert redact.scrub_obj(table) == [{"metric": "error", "value": f"401 for {REDACTED}"}, {REDACTED: ("x", REDACTED)}]


class CustomError(Exception):
    def __init__(self, message, detail):
        self.detail = detail
        super().__init__(message)


def test_an_exception_leaving_scrubbed_errors_keeps_its_type_and_loses_the_secret():
    redact.register("topsecret")
    with pytest.raises(CustomError) as failure:
        with redact.scrubbed_errors():
            try:
                raise ValueError("inner topsecret")
            except ValueError as inner:
                raise CustomError("outer topsecret", {"header": "topsecret"}) from inner
    assert "topsecret" not in str(failure.value) and "topsecret" not in repr(failure.value.args)
    assert failure.value.detail == {"header": REDACTED}
    assert "topsecret" not in str(failure.value.__cause__)


def test_log_records_are_scrubbed_whatever_the_logger(monkeypatch):
    redact.register("topsecret")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("value %s in a message", "topsecret")
        try:
            raise RuntimeError("boom topsecret")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "topsecret" not in output
    assert f"value {REDACTED} in a message" in output and "RuntimeError: boom" in output
