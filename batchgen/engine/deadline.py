"""A job watched up to its deadline: waited for on the shared poller, cancelled past
its deadline if the API lets it, else abandoned (it runs on and is paid; the next run
watches it again, never buys another)."""

from __future__ import annotations

import functools
import logging

import anyio

from ..errors import ApiError, PermanentApiError
from ..manifest import Unit
from ..retry import describe
from ..scenario.records import JobRecord
from ..store.commits import GroupCommit
from ..store.journal import Journal
from ..store.results import UnitResult
from .poll import JobUnreadable, JobVanished, Poller
from .ports import Api
from .settings import EngineSettings
from .summary import Summary

log = logging.getLogger(__name__)

# A cancel of a job past its deadline gets this long; custom jobs usually refuse.
CANCEL_TIMEOUT = 10.0


class Deadlines:
    def __init__(
        self,
        api: Api,
        poller: Poller,
        journal: Journal,
        commits: GroupCommit,
        summary: Summary,
        settings: EngineSettings,
    ) -> None:
        self._api = api
        self.poller = poller
        self._journal = journal
        self._commits = commits
        self.summary = summary
        self._settings = settings

    async def watch(
        self, unit: Unit, job_id: str, created_at: str
    ) -> JobRecord | UnitResult | None:
        """Wait for the job to end, up to its deadline."""
        self.summary.in_flight += 1
        try:
            with anyio.move_on_after(self._settings.job_timeout):
                return await self.poller.wait(job_id, created_at)
        except JobVanished as exc:
            log.warning("unit %s: %s; it is reconciled by the next run", unit.id, exc)
            await self._commits(functools.partial(self._journal.vanished, unit.id))
            return None
        except JobUnreadable as exc:
            await self._abandon(unit, job_id, f"{exc}; the next run watches it again")
            return None
        except PermanentApiError as exc:
            return UnitResult.failure(unit, job_id=job_id, error=describe(exc))
        finally:
            self.summary.in_flight -= 1
        return await self._past_deadline(unit, job_id)

    async def _past_deadline(self, unit: Unit, job_id: str) -> UnitResult | None:
        """A job still running at its deadline: ask for a cancel, off the poller's path and
        briefly.  A cancel accepted frees the unit; otherwise the job runs on and is paid,
        so it is abandoned, not failed: the next run watches it again."""
        timeout = self._settings.job_timeout
        with anyio.move_on_after(CANCEL_TIMEOUT):
            try:
                await self._api.cancel_job(job_id)
            except ApiError as exc:
                log.info("job %s: cancel refused (%s)", job_id, describe(exc))
            else:
                return UnitResult.failure(
                    unit, job_id=job_id, error=f"timed out after {timeout:g}s; cancelled"
                )
        await self._abandon(
            unit, job_id, f"still running after {timeout:g}s; the next run watches it again"
        )
        return None

    async def _abandon(self, unit: Unit, job_id: str, error: str) -> None:
        """The job runs on, and is paid, but this run stops watching it: the unit is
        left to the next run, which watches the same job again (never buys another)."""
        result = UnitResult(unit, "abandoned", job_id=job_id, error=error)
        abandon = functools.partial(
            self._journal.abandoned, unit.id, job_id, error, result.to_json()
        )
        await self._commits(abandon)
        log.warning("unit %s: job %s: %s", unit.id, job_id, error)
        self.summary.abandoned += 1
        return None
