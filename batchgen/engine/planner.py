"""What a run does with each unit, decided a chunk ahead (one journal query and one pass
of file checks per chunk), and before anything is sent, what the lost answers of a run
before made."""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..manifest import Unit
from ..store.commits import GroupCommit
from ..store.files import files_intact
from ..store.journal import Journal, Resume, Row, resume_action
from .ports import Offload
from .reconcile import Reconciler, StillUncertain
from .settings import EngineSettings
from .submit import server_time

log = logging.getLogger(__name__)

# Units looked up in the journal together when deciding what to do with them.
PLAN_CHUNK = 500


class Plan(NamedTuple):
    """A chunk of units with their journal rows, what to do with each, and which of
    the done ones still have their files."""

    units: list[Unit]
    rows: dict[str, Row]
    actions: dict[str, Resume]
    intact: set[str]


class Planner:
    def __init__(
        self,
        journal: Journal,
        settings: EngineSettings,
        offload: Offload,
        *,
        retry_failed: bool,
        resubmit_abandoned: bool,
    ) -> None:
        self._journal = journal
        self._settings = settings
        self._offload = offload
        self._retry_failed = retry_failed
        self._resubmit_abandoned = resubmit_abandoned

    async def plan_ahead(self, units: Iterator[Unit], plans: MemoryObjectSendStream[Plan]) -> None:
        async with plans:
            while plan := await self._offload(self.next_plan, units):
                await plans.send(plan)

    def next_plan(self, units: Iterator[Unit]) -> Plan | None:
        """The next chunk of units and what to do with each (blocking).

        One journal query and one pass of file checks per chunk, not per unit: a resume
        walks past every unit already done before its first new submission."""
        chunk = list(itertools.islice(units, PLAN_CHUNK))
        if not chunk:
            return None
        rows = self._journal.get_many([unit.id for unit in chunk])
        actions = {
            unit_id: resume_action(
                row,
                retry_failed=self._retry_failed,
                resubmit_abandoned=self._resubmit_abandoned,
            )
            for unit_id, row in rows.items()
        }
        out = self._settings.output_dir
        check = self._settings.files_intact or functools.partial(files_intact, out)
        intact = {
            unit_id
            for unit_id, action in actions.items()
            if action is Resume.VERIFY and check(rows[unit_id].files, rows[unit_id].stamps)
        }
        return Plan(chunk, rows, actions, intact)


async def reconcile_uncertain(
    journal: Journal, reconciler: Reconciler, commits: GroupCommit, offload: Offload
) -> None:
    """Before anything is sent: every unit whose POST may have made a job (the
    journal has what it sent) gets its job adopted, or is found to have none."""
    uncertain = await offload(journal.uncertain)
    pending = [(u, s, sent, own) for u, s, sent, own in uncertain if s and sent]
    if not pending:
        return
    log.info("%d units may have jobs from an earlier run's lost answers", len(pending))

    async def one(unit_id: str, since: str, sent: str, own: str | None) -> None:
        _, body = _json_loads(sent)
        try:
            job = await reconciler.find(unit_id, sent, body, server_time(since), own)
        except StillUncertain as exc:
            log.warning("unit %s: %s", unit_id, exc)
            return
        if job is not None:
            log.info("unit %s: adopted job %s whose answer was lost", unit_id, job.job_id)
            await commits(
                functools.partial(
                    journal.submitted,
                    unit_id,
                    job.job_id,
                    job.cost,
                    job.status,
                    job.refundable,
                )
            )
        else:
            await commits(
                functools.partial(
                    journal.nothing_made, unit_id, "its answer was lost; no job was made"
                )
            )

    async with anyio.create_task_group() as tg:
        for unit_id, since, sent, own in pending:
            tg.start_soon(one, unit_id, since, sent, own)


def _json_loads(sent: str) -> tuple[str, dict[str, Any]]:
    model, body = json.loads(sent)
    return str(model), dict(body)
