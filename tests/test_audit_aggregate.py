"""Events anyone can provoke are counted, not written one by one: at most one event per key and
window plus one with the window's count, a bounded number of events for any number of keys,
and counts that always add up to the occurrences — also when the log closes mid-window."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from controller.audit.aggregate import OVERFLOW, OVERFLOW_ACTOR, Aggregator
from controller.audit.log import Event
from controller.config import load_settings
from controller.platform import Platform
from controller.store import AuditEvent


def written(platform: Platform, action: str) -> list[tuple[str, str, dict]]:
    platform.audit.append(Event("user:t", "test.barrier", "thing", "x"))  # what was queued before is in
    with platform.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))
        return [(r.actor, r.subject_id, json.loads(r.details)) for r in rows]


def refusal(actor: str, i: int) -> Event:
    return Event(actor, "gateway.refused", "bubble", "b-1", {"path": f"files/{i}"})


def test_one_event_a_window_per_key_and_the_counts_add_up(platform: Platform) -> None:
    now = [0.0]
    attempts = Aggregator(platform.audit, window_seconds=60, clock=lambda: now[0])
    for i in range(1000):
        attempts.record(refusal("user:bruno", i), key=("user:bruno", "b-1"))
    attempts.record(refusal("user:zoe", -1), key=("user:zoe", "b-1"))  # another key: its own first event
    assert [(actor, d) for actor, _, d in written(platform, "gateway.refused")] == [
        ("user:bruno", {"path": "files/0", "count": 1}), ("user:zoe", {"path": "files/-1", "count": 1})]
    now[0] = 61.0  # the window is over: its count goes in before the next window's first occurrence
    attempts.record(refusal("user:bruno", 1000), key=("user:bruno", "b-1"))
    events = written(platform, "gateway.refused")
    summary = events[2][2]
    assert (summary["path"], summary["count"]) == ("files/0", 999) and summary["since"] <= summary["until"]
    assert events[3][2] == {"path": "files/1000", "count": 1}
    assert sum(d["count"] for actor, _, d in events if actor == "user:bruno") == 1001
    assert len(events) == 4


def test_a_flood_of_distinct_keys_writes_a_bounded_number_of_events(platform: Platform) -> None:
    attempts = Aggregator(platform.audit, window_seconds=3600, max_keys=10)
    for i in range(500):
        attempts.record(refusal(f"user:u{i}", i), key=(f"user:u{i}",))
    attempts.flush()
    events = written(platform, "gateway.refused")
    assert len(events) == 11  # the first of ten keys, then the rest under one overflow key
    assert events[-1][:2] == (OVERFLOW_ACTOR, OVERFLOW) and events[-1][2]["count"] == 490
    assert sum(d["count"] for _, _, d in events) == 500


def test_what_is_pending_is_written_when_the_log_closes(home: Path, db_url: str) -> None:
    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0)
    with Platform(settings) as platform:
        attempts = Aggregator(platform.audit, window_seconds=3600)
        for i in range(3):
            attempts.record(refusal("anonymous", i), key=("anonymous",))
    with Platform(settings) as platform:
        counts = [d["count"] for _, _, d in written(platform, "gateway.refused")]
    assert counts == [1, 2]
