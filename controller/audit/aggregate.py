"""Repeated events counted instead of written one by one, so that whoever can provoke an event
(an anonymous request to the gateway, say) cannot flood the log with it.

Per key (the caller chooses it: actor and subject, for instance) and per window: the first
occurrence is appended at once (`details.count` 1) and is durable before `record` returns, so an
attempt shows in the log as soon as it happens; later occurrences in the same window are only
counted, and one event with their number (`details.count`, and the window's bounds `since` and
`until`) is appended when the window ends, or when the audit log closes. So the counts of a
key's events add up to its occurrences: nothing is dropped without a trace. At most `max_keys` keys are tracked per window; occurrences
beyond them are counted under one overflow key per action, so a flood of distinct keys still
writes a bounded number of events. What a crash loses is the count of the window under way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from controller.audit.log import AuditLog, Event
from controller.store import iso, utcnow

OVERFLOW = "(other keys)"
OVERFLOW_ACTOR = "system:audit-aggregate"


@dataclass
class _Tally:
    event: Event
    count: int
    since: str


class Aggregator:
    def __init__(self, log: AuditLog, *, window_seconds: float = 60.0, max_keys: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self.window = window_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[Hashable, _Tally] = {}
        self._window_end = clock() + window_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        log.on_close(self.close)

    def record(self, event: Event, key: Hashable) -> None:
        """Append `event` if it is the first of its key in this window; count it otherwise."""
        due = self._roll()
        first = False
        with self._lock:
            tally = self._tallies.get(key)
            if tally is not None:
                tally.count += 1
            elif len(self._tallies) < self.max_keys:
                self._tallies[key] = _Tally(event, 0, iso(utcnow()))
                first = True
            else:
                overflow = self._tallies.get((OVERFLOW, event.action))
                if overflow is None:
                    summary = replace(event, actor=OVERFLOW_ACTOR, subject_id=OVERFLOW, details={})
                    self._tallies[(OVERFLOW, event.action)] = _Tally(summary, 1, iso(utcnow()))
                else:
                    overflow.count += 1
        self._append(due)
        if first:
            self._log.append(replace(event, details={**event.details, "count": 1}))
        self._start()

    def flush(self, timeout: float | None = 60) -> None:
        """Append the counts of the window under way and start a new one; they are durable when
        this returns (the window's own end does not wait: it happens on a caller's request)."""
        with self._lock:
            due = self._take()
        for future in self._append(due):
            future.result(timeout)

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def _roll(self) -> list[_Tally]:
        with self._lock:
            if self._clock() < self._window_end:
                return []
            return self._take()

    def _take(self) -> list[_Tally]:
        due = [t for t in self._tallies.values() if t.count > 0]
        self._tallies = {}
        self._window_end = self._clock() + self.window
        return due

    def _append(self, due: list[_Tally]) -> list[Future]:
        until = iso(utcnow())
        return [self._log.submit(replace(tally.event, details={**tally.event.details, "count": tally.count,
                                                               "since": tally.since, "until": until}))
                for tally in due]

    def _start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="audit-aggregator", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self._window_end - self._clock())):
            self._append(self._roll())
