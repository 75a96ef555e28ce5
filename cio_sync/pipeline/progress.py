"""Progress of a long sync: a Prefect progress artifact, and listeners (the CLI's terminal bar).

The flow calls `SyncProgress.page_done` once per page. The total is an estimate that gets
better every page: users done so far + Hull's count of users still at or after the cursor
(users re-indexed during the run, e.g. by the write-back, are counted when Hull counts them).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

Listener = Callable[[int, "int | None"], None]

_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Called with (users done, users total or None) after each page of every sync in this process."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def percent(done: int, total: int | None) -> float:
    if not total:
        return 0.0
    return min(100.0, 100.0 * done / total)


def describe(done: int, total: int | None) -> str:
    if total is None:
        return f"{done:,} users done (Hull did not say how many are left)"
    return f"{done:,} of {total:,} users done ({percent(done, total):.0f}%)"


class SyncProgress:
    """One per flow run. Artifact failures never fail the sync: progress is a courtesy."""

    ARTIFACT_KEY = "sync-users-progress"
    # Each artifact update is an API round trip (~50 ms on a busy 2-core machine); a rerun
    # can do dozens of pages a second, so the artifact follows at most once per interval.
    ARTIFACT_INTERVAL_SECONDS = 1.0

    def __init__(self, logger=None):
        self.done = 0
        self._artifact_updated_at = 0.0
        self.total: int | None = None
        self.logger = logger
        self.artifact_id = None
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                progress=0.0, key=self.ARTIFACT_KEY, description="sync-users: starting"
            )
        except Exception as exc:  # no API reachable, or no run context
            self._warn(exc)

    def page_done(self, users: int, remaining_at_start: int | None) -> None:
        """`remaining_at_start`: Hull's count of users left when the page was fetched, this
        page's included."""
        if remaining_at_start is not None:
            self.total = self.done + remaining_at_start
        self.done += users
        if self.total is not None and self.done > self.total:
            self.total = self.done
        self._publish()

    def finish(self) -> None:
        self.total = self.done
        self._publish(final=True)

    def _publish(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.artifact_id is not None and (
            final or now - self._artifact_updated_at >= self.ARTIFACT_INTERVAL_SECONDS
        ):
            self._artifact_updated_at = now
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(
                    self.artifact_id,  # type: ignore[arg-type]  # a sync call: an id, not a coroutine
                    percent(self.done, self.total),
                    description=describe(self.done, self.total),
                )
            except Exception as exc:
                self._warn(exc)
                self.artifact_id = None  # stop trying: one warning, not one per page
        with _listeners_lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.done, self.total)

    def _warn(self, exc: Exception) -> None:
        if self.logger is not None:
            self.logger.warning("progress artifact not updated: %s", exc)


class TerminalProgressBar:
    """`[#####.....]  42%  4,200 of 10,000 users` redrawn in place on a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            filled = int(self.WIDTH * min(done, total) / total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"[{bar}] {percent(done, total):3.0f}%  {done:,} of {total:,} users"
        else:
            line = f"{done:,} users"
        # \r + erase-line: redraw in place; a log line printed meanwhile simply scrolls above.
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
