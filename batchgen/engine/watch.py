"""Which jobs to ask about, and when: the shared poller's pure core.

The poller learns about every job in flight from one listing of the jobs the server
changed since a cursor (``GET /v1/jobs?type=custom&updatedAfter=T``), instead of one
request per job.  :class:`Watcher` holds what that needs and decides, from the clock it
is handed, when to list and which jobs to ask about one by one; the engine does the I/O.

* **The cursor is in the server's clock**: the latest ``updatedAt`` any listing showed,
  less a millisecond (timestamps are in milliseconds; two changes may share one).  Every
  ``SWEEP_EVERY`` seconds a listing looks ``SKEW_MARGIN`` further back, for changes that
  reach the listing late (replicas' clocks, an eventually consistent index).  When a
  sweep finds an end the usual listings missed, they look back further from then on
  (half again as far as that end was late), and a sweep that finds none halves that.
* **Scans are paced by the work**: by Little's law ``n`` jobs in flight of mean time
  ``T`` finish ``n / T`` a second; listing every ``1 / (budget × rate)`` seconds keeps
  the listings near ``budget`` per job, and never more than ``poll_interval`` apart, so
  a finished job is noticed within one poll interval, and much sooner when many run.
  The rate is the larger of ``n / T`` and the jobs that ended in the last ``T``: when
  the last jobs of a run drain, the pace stays up, since each one's wait now adds to
  the run's length.
* **A job the listing has not shown for long** (twice the usual job time, and at least
  ``QUIET_MIN``) is asked about directly, less often each time it is still running.
* **Jobs that need a direct look at once**: one from before the listing's window (a
  resumed job, whose end may be long past), and any job when the listing is refused, in
  which case each job is asked about on its own schedule: not before it can have
  finished, then every poll interval.
* **A job may end before its submission's answer is read**: a listing that shows an
  unknown job ended keeps it aside for a while, so the job is finished when it joins.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..scenario.records import JobRecord, server_time

# Listing requests to spend per job finished, when many jobs are in flight.  Each one
# more shortens the wait to notice a finished job; some headroom is kept for sweeps.
LIST_REQUESTS_PER_JOB = 0.22
# Listings at most this many times per poll interval, however many jobs run.
SCANS_PER_INTERVAL_MAX = 10
SWEEP_EVERY = 5.0
SKEW_MARGIN = timedelta(seconds=5)
CURSOR_EPSILON = timedelta(milliseconds=1)
QUIET_MIN = 10.0
QUIET_MAX = 300.0
# A job is not asked about on its own before this share of the usual job time.
EARLY_FRACTION = 0.8
# Ends of jobs not (yet) watched kept for when their submission's answer arrives: a
# job ends before its POST is answered only while that POST is in flight, so a few
# times the most jobs in flight (--concurrency is at most 1,000) is plenty.
SIGHTINGS_KEPT = 3_000
# Weight of the newest job in the running mean of job times.
MEAN_WEIGHT = 0.05


@dataclass(frozen=True, slots=True)
class WatchSettings:
    poll_interval: float
    list_requests_per_job: float = LIST_REQUESTS_PER_JOB
    sweep_every: float = SWEEP_EVERY
    skew_margin: timedelta = SKEW_MARGIN
    quiet_min: float = QUIET_MIN
    quiet_max: float = QUIET_MAX


@dataclass(slots=True)
class _Watched:
    since: float
    get_at: float  # when to ask about the job directly
    quiet: float  # how long the listing may leave it out before that
    timed: bool  # whether its whole run was watched, so its time says how long jobs take
    direct: bool = False  # asked about on its own: the listing cannot show it


class Watcher:
    def __init__(self, settings: WatchSettings, now: float) -> None:
        self.settings = settings
        self.list_usable = True
        self.horizon: datetime | None = None
        self._floor: datetime | None = None
        self._last_scan = now
        self._last_sweep = now
        self._jobs: dict[str, _Watched] = {}
        self._sightings: OrderedDict[str, JobRecord] = OrderedDict()
        self.mean_job_time: float | None = None
        self._ended_at: deque[float] = deque()  # when watched jobs were seen ending
        # How far behind the horizon the usual listing starts: grows when ends show late.
        self.lookback = CURSOR_EPSILON
        self._sweeping = False

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    # ------------------------------------------------------------------ membership

    def add(self, job_id: str, created_at: str, now: float) -> JobRecord | None:
        """Start watching a job; returns its final record if a listing already showed it
        ended (then it is not watched)."""
        ended = self._sightings.pop(job_id, None)
        if ended is not None:
            return ended
        created = server_time(created_at)
        in_window = created is not None and (
            self.horizon is None or created >= self.horizon - self.settings.skew_margin
        )
        if in_window and self.horizon is None:
            assert created is not None
            self._floor = created if self._floor is None else min(self._floor, created)
        quiet = self._quiet_limit()
        if not self.list_usable:
            get_at = now + self._first_look_delay()
        elif in_window:
            get_at = now + quiet
        else:
            get_at = now  # it may have ended long before the listing's window
        self._jobs[job_id] = _Watched(
            since=now,
            get_at=get_at,
            quiet=quiet,
            timed=in_window,
            direct=not self.list_usable,
        )
        return None

    def finished(self, job_id: str, now: float) -> None:
        watched = self._jobs.pop(job_id, None)
        if watched is not None:
            self._ended_at.append(now)
        if watched is not None and watched.timed:
            took = now - watched.since
            if self.mean_job_time is None:
                self.mean_job_time = took
            else:
                self.mean_job_time += MEAN_WEIGHT * (took - self.mean_job_time)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    # ------------------------------------------------------------------ schedule

    def scan_gap(self) -> float:
        interval = self.settings.poll_interval
        usual = self.mean_job_time
        if usual is None or not self._jobs:
            return interval
        ended = self._ended_at
        while ended and ended[0] < self._last_scan - usual:
            ended.popleft()
        rate = max(len(self._jobs), len(ended)) / usual
        paced = 1 / (self.settings.list_requests_per_job * rate)
        return min(max(paced, interval / SCANS_PER_INTERVAL_MAX), interval)

    def next_scan_at(self) -> float | None:
        if not self.list_usable or not self._jobs or self.cursor_base() is None:
            return None
        return self._last_scan + self.scan_gap()

    def next_wakeup(self) -> float | None:
        times = [w.get_at for w in self._jobs.values()]
        scan = self.next_scan_at()
        if scan is not None:
            times.append(scan)
        return min(times, default=None)

    def cursor_base(self) -> datetime | None:
        return self.horizon if self.horizon is not None else self._floor

    def cursor(self, now: float) -> datetime | None:
        """Where the next listing starts, or None when no server time is known yet."""
        base = self.cursor_base()
        if base is None:
            return None
        self._sweeping = now - self._last_sweep >= self.settings.sweep_every
        if self._sweeping:
            self._last_sweep = now
            return base - self.settings.skew_margin
        return base - self.lookback

    def due_for_a_look(self, now: float) -> list[str]:
        return [job_id for job_id, w in self._jobs.items() if w.get_at <= now]

    # ------------------------------------------------------------------ what was learned

    def listed(self, jobs: list[JobRecord], now: float) -> list[JobRecord]:
        """Take in a listing; returns the watched jobs it shows ended (no longer watched)."""
        self._last_scan = now
        ended: list[JobRecord] = []
        # Where the usual listing would have started: ends older than that, found by a
        # sweep, reached the listing late.
        usually_from = self.horizon - self.lookback if self.horizon is not None else None
        horizon_before = self.horizon
        latest_miss = timedelta(0)
        for job in jobs:
            changed = server_time(job.updated_at)
            if changed is not None and (self.horizon is None or changed > self.horizon):
                self.horizon = changed
            watched = self._jobs.get(job.job_id)
            if watched is None:
                if job.terminal:
                    self._sight(job)
            elif job.terminal:
                ended.append(job)
                self.finished(job.job_id, now)
                if self._sweeping and usually_from and changed and changed < usually_from:
                    assert horizon_before is not None
                    latest_miss = max(latest_miss, horizon_before - changed)
            elif not watched.direct:
                watched.quiet = self._quiet_limit()
                watched.get_at = now + watched.quiet
        if self._sweeping:
            self._sweeping = False
            if latest_miss:
                self.lookback = min(
                    max(self.lookback, latest_miss * 1.5), self.settings.skew_margin
                )
            else:
                self.lookback = max(self.lookback / 2, CURSOR_EPSILON)
        return ended

    def list_failed(self, now: float) -> None:
        """A listing failed for now: try again one gap later."""
        self._last_scan = now

    def list_refused(self, now: float) -> None:
        """The listing is not available: ask about every job on its own from now on."""
        self.list_usable = False
        for watched in self._jobs.values():
            watched.direct = True
            watched.get_at = min(watched.get_at, now)

    def looked(self, job: JobRecord, now: float) -> bool:
        """Take in a direct answer about one job; True if it ended (no longer watched)."""
        watched = self._jobs.get(job.job_id)
        if watched is None:
            return False
        if job.terminal:
            self.finished(job.job_id, now)
            return True
        changed = server_time(job.updated_at)
        watched.direct = not self.list_usable or changed is None
        if watched.direct:
            watched.get_at = now + self._next_look_delay(now - watched.since)
            return False
        if self.horizon is None and changed is not None:
            # Its next change comes after this one: a listing from here will show it.
            self._floor = changed if self._floor is None else min(self._floor, changed)
        watched.get_at = now + watched.quiet
        watched.quiet = min(watched.quiet * 2, self.settings.quiet_max)
        return False

    def look_failed(self, job_id: str, now: float) -> None:
        watched = self._jobs.get(job_id)
        if watched is not None:
            watched.get_at = now + self.settings.poll_interval

    # ------------------------------------------------------------------ helpers

    def _sight(self, job: JobRecord) -> None:
        # Kept without what it was asked (the input is all of a job's bulk, and not needed).
        self._sightings[job.job_id] = dataclasses.replace(job, request=None)
        self._sightings.move_to_end(job.job_id)
        while len(self._sightings) > SIGHTINGS_KEPT:
            self._sightings.popitem(last=False)

    def _quiet_limit(self) -> float:
        usual = 2 * self.mean_job_time if self.mean_job_time is not None else 0.0
        return max(self.settings.quiet_min, usual, 4 * self.settings.poll_interval)

    def _first_look_delay(self) -> float:
        usual = self.mean_job_time
        interval = self.settings.poll_interval
        return max(interval, EARLY_FRACTION * usual) if usual is not None else interval

    def _next_look_delay(self, age: float) -> float:
        interval = self.settings.poll_interval
        usual = self.mean_job_time
        if usual is None:
            return interval
        if age < EARLY_FRACTION * usual:
            return max(interval, EARLY_FRACTION * usual - age)
        # Long past the usual time: probably a slow one; ask less and less often.
        return min(interval * max(1.0, age / (3 * usual)), 10 * interval)
