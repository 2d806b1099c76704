"""The shared poller's pure core: when to list, where the cursor is, whom to ask alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchgen.engine.watch import (
    CURSOR_EPSILON,
    QUIET_MIN,
    SKEW_MARGIN,
    SWEEP_EVERY,
    Watcher,
    WatchSettings,
)
from batchgen.scenario.records import JobRecord

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
INTERVAL = 0.25


def stamp(seconds: float) -> str:
    return (
        (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def job(job_id: str, status: str, updated: float, created: float = 0.0) -> JobRecord:
    return JobRecord(job_id, status, created_at=stamp(created), updated_at=stamp(updated))


def watcher(now: float = 0.0, **settings: float) -> Watcher:
    return Watcher(WatchSettings(poll_interval=INTERVAL, **settings), now)  # type: ignore[arg-type]


def with_usual_job_time(watch: Watcher, seconds: float) -> None:
    watch.mean_job_time = seconds


@pytest.mark.parametrize(
    ("mean_job_time", "in_flight", "recently_ended", "gap"),
    [
        # Nothing known yet: one poll interval.
        (None, 50, 0, INTERVAL),
        # 50 jobs of 1 s end 50 a second; 0.2 listings per job: one every 0.1 s.
        (1.0, 50, 0, 0.1),
        # Few jobs: never more than a poll interval apart.
        (1.0, 2, 0, INTERVAL),
        # Very many: never more than ten listings per poll interval.
        (1.0, 5000, 0, INTERVAL / 10),
        # The run drains (5 left), but 50 ended within the last job time: the pace holds.
        (1.0, 5, 50, 0.1),
        # Long jobs: the same number in flight finishes slower, so list less often.
        (10.0, 50, 0, INTERVAL),
    ],
)
def test_listings_are_paced_by_how_fast_jobs_end(
    mean_job_time: float | None, in_flight: int, recently_ended: int, gap: float
) -> None:
    watch = watcher(list_requests_per_job=0.2)
    for index in range(recently_ended):
        watch.add(f"done{index}", stamp(0), 0.0)
    watch.listed([job(f"done{i}", "success", 0.5) for i in range(recently_ended)], 0.5)
    watch.mean_job_time = mean_job_time
    for index in range(in_flight):
        watch.add(f"j{index}", stamp(0), 0.5)
    assert watch.scan_gap() == pytest.approx(gap)


def test_the_pace_falls_once_the_recent_ends_are_older_than_a_job_time() -> None:
    watch = watcher(list_requests_per_job=0.2)
    for index in range(50):
        watch.add(f"done{index}", stamp(0), 0.0)
    watch.listed([job(f"done{i}", "success", 1.0) for i in range(50)], 1.0)
    watch.mean_job_time = 1.0
    watch.add("last", stamp(0.9), 1.0)
    assert watch.scan_gap() == pytest.approx(0.1)
    watch.listed([], 2.5)  # a listing 1.5 s later: those ends no longer count
    assert watch.scan_gap() == INTERVAL


def test_the_cursor_starts_at_the_earliest_job_then_follows_the_latest_change() -> None:
    watch = watcher()
    assert watch.cursor(0.0) is None  # no server time known: nothing to list from
    assert watch.next_scan_at() is None
    watch.add("a", stamp(5), 0.0)
    watch.add("b", stamp(3), 0.0)
    assert watch.cursor(0.1) == T0 + timedelta(seconds=3) - CURSOR_EPSILON
    watch.listed([job("a", "queued", 7.0, created=5), job("b", "queued", 6.0, created=3)], 0.2)
    assert watch.horizon == T0 + timedelta(seconds=7)
    assert watch.cursor(0.3) == T0 + timedelta(seconds=7) - CURSOR_EPSILON
    # Now and then a listing reaches further back, for changes that show up late.
    assert watch.cursor(SWEEP_EVERY + 0.01) == T0 + timedelta(seconds=7) - SKEW_MARGIN
    assert watch.cursor(SWEEP_EVERY + 0.02) == T0 + timedelta(seconds=7) - CURSOR_EPSILON


def test_a_listing_hands_back_the_watched_jobs_it_shows_ended() -> None:
    watch = watcher()
    for name in ("a", "b", "c"):
        watch.add(name, stamp(0), 0.0)
    ended = watch.listed(
        [job("a", "success", 1.0), job("b", "in-progress", 1.0), job("c", "failure", 1.1)], 1.2
    )
    assert [j.job_id for j in ended] == ["a", "c"]
    assert "a" not in watch and "b" in watch and "c" not in watch
    assert watch.mean_job_time == pytest.approx(1.2)


def test_a_job_seen_ended_before_it_joined_is_finished_on_arrival() -> None:
    watch = watcher()
    watch.add("other", stamp(0), 0.0)
    # The listing shows "fast" ended before its POST's answer was read.
    assert watch.listed([job("fast", "success", 0.3)], 0.4) == []
    sighted = watch.add("fast", stamp(0.1), 0.5)
    assert sighted is not None and sighted.status == "success"
    assert "fast" not in watch


def test_a_job_from_before_the_listings_window_is_asked_about_at_once() -> None:
    watch = watcher()
    watch.add("new", stamp(100), 0.0)
    watch.listed([job("new", "queued", 101.0, created=100)], 0.1)
    # A resumed job created long before: its end may be before the cursor.
    watch.add("resumed", stamp(10), 0.2)
    assert watch.due_for_a_look(0.2) == ["resumed"]
    # One created within the margin is left to the listing.
    watch.add("recent", stamp(97), 0.2)
    assert "recent" not in watch.due_for_a_look(0.2)


def test_a_job_the_listing_leaves_out_is_asked_about_less_and_less_often() -> None:
    watch = watcher()
    watch.add("quiet", stamp(0), 0.0)
    assert watch.due_for_a_look(QUIET_MIN - 0.01) == []
    assert watch.due_for_a_look(QUIET_MIN) == ["quiet"]
    still_running = job("quiet", "in-progress", QUIET_MIN, created=0)
    assert watch.looked(still_running, QUIET_MIN) is False
    assert watch.due_for_a_look(2 * QUIET_MIN - 0.01) == []
    assert watch.due_for_a_look(2 * QUIET_MIN) == ["quiet"]
    assert watch.looked(still_running, 2 * QUIET_MIN) is False
    # The limit doubled: next look 2 × QUIET_MIN later.
    assert watch.due_for_a_look(4 * QUIET_MIN - 0.01) == []
    assert watch.due_for_a_look(4 * QUIET_MIN) == ["quiet"]
    assert watch.looked(job("quiet", "success", 40.0), 4 * QUIET_MIN) is True
    assert "quiet" not in watch


def test_a_listing_that_shows_a_job_running_puts_off_asking_about_it() -> None:
    watch = watcher()
    watch.add("a", stamp(0), 0.0)
    watch.listed([job("a", "in-progress", 8.0)], 8.0)
    assert watch.due_for_a_look(QUIET_MIN) == []
    assert watch.due_for_a_look(8.0 + QUIET_MIN) == ["a"]


def test_when_the_listing_is_refused_each_job_is_asked_about_on_its_own_schedule() -> None:
    watch = watcher()
    with_usual_job_time(watch, 2.0)
    watch.add("a", stamp(0), 0.0)
    watch.list_refused(0.5)
    assert watch.next_scan_at() is None  # no more listings
    assert watch.due_for_a_look(0.5) == ["a"]
    assert watch.looked(job("a", "in-progress", 0.5), 0.5) is False
    # Young: not asked again before it can have finished (0.8 of the usual 2 s).
    assert watch.due_for_a_look(1.59) == []
    assert watch.due_for_a_look(1.6) == ["a"]
    # A job joining now: first asked about 0.8 × 2 s after it starts.
    watch.add("b", stamp(1), 1.0)
    assert "b" not in watch.due_for_a_look(2.59)
    assert "b" in watch.due_for_a_look(2.6)
    # Past its usual time: every poll interval.
    assert watch.looked(job("a", "in-progress", 2.0), 2.5) is False
    assert "a" not in watch.due_for_a_look(2.5 + INTERVAL - 0.01)
    assert "a" in watch.due_for_a_look(2.5 + INTERVAL)


def test_a_failed_listing_waits_one_gap_and_a_failed_look_one_interval() -> None:
    watch = watcher()
    watch.add("a", stamp(0), 0.0)
    watch.list_failed(1.0)
    assert watch.next_scan_at() == pytest.approx(1.0 + INTERVAL)
    watch.look_failed("a", 3.0)
    assert watch.due_for_a_look(3.0 + INTERVAL) == ["a"]
    assert watch.next_wakeup() == pytest.approx(1.0 + INTERVAL)


def test_ends_that_reach_the_listing_late_make_it_look_further_back() -> None:
    watch = watcher()
    for name in ("a", "b"):
        watch.add(name, stamp(0), 0.0)
    watch.listed([job("a", "in-progress", 10.0), job("b", "in-progress", 10.0)], 1.0)
    assert watch.cursor(1.1) == T0 + timedelta(seconds=10) - CURSOR_EPSILON
    watch.listed([job("a", "in-progress", 12.0)], 1.2)
    # The sweep shows "b" ended at 11.0, a second before the horizon: the usual
    # listings missed it, so from now on they start 1.5 s behind the horizon.
    assert watch.cursor(SWEEP_EVERY + 1) == T0 + timedelta(seconds=12) - SKEW_MARGIN
    assert [j.job_id for j in watch.listed([job("b", "success", 11.0)], SWEEP_EVERY + 1)] == ["b"]
    assert watch.lookback == timedelta(seconds=1.5)
    assert watch.cursor(SWEEP_EVERY + 1.1) == T0 + timedelta(seconds=12 - 1.5)
    # A sweep that finds nothing late halves it.
    watch.cursor(2 * SWEEP_EVERY + 1)
    watch.listed([job("a", "in-progress", 13.0)], 2 * SWEEP_EVERY + 1)
    assert watch.lookback == timedelta(seconds=0.75)
