"""The one scrubber: known credential values never reach a message.

Credentials register themselves here when they are loaded (cio_sync/settings.py). From then
on, every text that can reach the Prefect server (log records, state messages of failed
flows and tasks, artifacts), the state database's error columns or the terminal passes
through `scrub`, which replaces each known value (and the HTTP Basic token built from the
Customer.io credentials) with `[redacted]`:

- log records: a log-record factory installed at the first registration scrubs the message
  and the formatted traceback of every record, whichever logger made it (Prefect's API log
  handler sends what the record holds);
- exceptions leaving a flow or a task: `scrubbed_errors()` rewrites their arguments in
  place, so the Failed state's message and the result Prefect stores keep no secret;
- artifacts, CLI output, error columns: callers pass their text through `scrub`/`scrub_obj`.

The module imports nothing of this project: every layer may use it.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

REDACTED = "[redacted]"
# Shorter values would scrub ordinary words; no real credential is this short.
MIN_LENGTH = 4

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a value containing another is replaced whole
_factory_installed = False


def register(*values: str | None) -> None:
    """Remembers credential values (and their URL-encoded forms) for `scrub`."""
    global _secrets
    found = set()
    for value in values:
        if not value or len(value) < MIN_LENGTH:
            continue
        found.add(value)
        found.add(quote(value, safe=""))
    with _lock:
        new = found - set(_secrets)
        if not new:
            return
        _secrets = tuple(sorted({*_secrets, *new}, key=len, reverse=True))
    _install_log_scrubber()


def register_basic_auth(user: str | None, password: str | None) -> None:
    """The `Authorization: Basic` token of a user/password pair is a credential too."""
    if user is not None and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        register(password, token)


def forget_all() -> None:
    """Tests only: start from no known value."""
    global _secrets
    with _lock:
        _secrets = ()


def known() -> tuple[str, ...]:
    return _secrets


def scrub(text: str) -> str:
    secrets = _secrets
    if not secrets or not text:
        return text
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def contains_secret(text: str) -> bool:
    return any(value in text for value in _secrets)


def scrub_obj(value: Any) -> Any:
    """`scrub` through strings, lists, tuples and dicts (keys too): artifact tables, summaries."""
    if not _secrets:
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_obj(k): scrub_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_obj(v) for v in value)
    return value


def scrub_exception(exc: BaseException, _seen: set[int] | None = None) -> BaseException:
    """Rewrites, in place, every string argument and attribute of `exc` (and of the exceptions
    chained to it) that holds a known value. The type is kept, so callers still catch it."""
    seen = _seen if _seen is not None else set()
    if id(exc) in seen or not _secrets:
        return exc
    seen.add(id(exc))
    try:
        if any(isinstance(a, str) and contains_secret(a) for a in exc.args) or contains_secret(repr(exc.args)):
            exc.args = tuple(scrub_obj(a) if isinstance(a, (str, dict, list, tuple)) else a for a in exc.args)
        for name, value in list(vars(exc).items()):
            if isinstance(value, (str, dict, list, tuple)):
                setattr(exc, name, scrub_obj(value))
    except Exception:  # an exception type that refuses new attributes: its message still goes through the log scrubber
        pass
    for chained in (exc.__cause__, exc.__context__):
        if chained is not None:
            scrub_exception(chained, seen)
    return exc


@contextmanager
def scrubbed_errors() -> Iterator[None]:
    """Around the body of a flow or task: an exception leaving it carries no known value.
    Prefect's control-flow signals (pause, abort) are BaseExceptions and pass untouched."""
    try:
        yield
    except Exception as exc:
        scrub_exception(exc)
        raise


_formatter = logging.Formatter()


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error handling
        return record
    if contains_secret(message):
        record.msg, record.args = scrub(message), ()
    if record.exc_info and not record.exc_text:
        text = _formatter.formatException(record.exc_info)
        if contains_secret(text):
            record.exc_text = scrub(text)
    if record.stack_info and contains_secret(record.stack_info):
        record.stack_info = scrub(record.stack_info)
    return record


def _install_log_scrubber() -> None:
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            return scrub_record(record) if _secrets else record

        logging.setLogRecordFactory(factory)
        _factory_installed = True
