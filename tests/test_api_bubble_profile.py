"""When a bubble ends, from the real `bulles.bubble` policy and a fixed clock: its lifetime is
counted in hours from its start, its last day (the project's end, the grants') is inclusive.
Runs on SQLite and PostgreSQL (the platform records the decision)."""

from __future__ import annotations

import datetime as dt

from controller.bubbles import expires_at, profile_input
from controller.platform import Platform

UTC = dt.timezone.utc
PROJECT = {"id": "projet-a", "start_date": "2026-09-01", "end_date": "2027-06-30"}


def ends(platform: Platform, started: dt.datetime, lifetime_hours: float, project: dict = PROJECT) -> dt.datetime:
    decision = platform.decide("bubble", profile_input(project, [], {"lifetime_hours": lifetime_hours},
                                                       started.date().isoformat()))
    profile = decision.result
    assert profile["allowed"], profile["reasons"]
    return expires_at(started, float(profile["lifetime_hours"]), profile["expires"])


def test_a_bubble_started_in_the_evening_runs_its_whole_lifetime(platform: Platform) -> None:
    """Started at 19:03 with 8 hours, it used to end at midnight UTC: the policy counted the
    lifetime from the start of the day and gave that day as the last."""
    started = dt.datetime(2026, 11, 22, 19, 3, tzinfo=UTC)
    assert ends(platform, started, 8) == dt.datetime(2026, 11, 23, 3, 3, tzinfo=UTC)
    assert ends(platform, dt.datetime(2026, 11, 22, 0, 30, tzinfo=UTC), 72) == dt.datetime(2026, 11, 25, 0, 30,
                                                                                           tzinfo=UTC)


def test_the_last_day_of_the_project_is_inclusive_and_bounds_the_lifetime(platform: Platform) -> None:
    started = dt.datetime(2027, 6, 30, 19, 3, tzinfo=UTC)
    assert ends(platform, started, 8) == dt.datetime(2027, 7, 1, 0, 0, tzinfo=UTC)
    assert ends(platform, dt.datetime(2027, 6, 30, 9, 0, tzinfo=UTC), 8) == dt.datetime(2027, 6, 30, 17, 0, tzinfo=UTC)
