"""Group commit: calls made together share a trip and a transaction, and keep their
order, their atomicity and their own errors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from batchgen.errors import StorageError
from batchgen.store.commits import GroupCommit
from batchgen.store.journal import Journal, State

# What a unit's POST sent, as the journal keeps it with ``submitting``.
SENT = '["model_x", {"prompt": "p"}]'


class SpyJournal(Journal):
    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.durable_batches: list[bool] = []

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        outermost = not self._in_batch
        if outermost:
            self.durable_batches.append(durable)
        with super().batch(durable=durable):
            yield


@pytest.mark.anyio
async def test_calls_made_together_share_one_commit_and_keep_their_order(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path, SpyJournal)
    commits = GroupCommit(journal)
    seen: list[int] = []
    async with anyio.create_task_group() as writer:
        await writer.start(commits.run)
        async with anyio.create_task_group() as tg:
            for index in range(40):
                tg.start_soon(functools.partial(commits, functools.partial(seen.append, index)))
        commits.close()
    assert seen == list(range(40))
    assert 1 <= commits.batches < 40
    assert len(journal.durable_batches) == commits.batches


@pytest.mark.anyio
async def test_a_batch_with_a_submitting_is_fsynced_and_others_are_not(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path, SpyJournal)
    commits = GroupCommit(journal)
    async with anyio.create_task_group() as writer:
        await writer.start(commits.run)
        submitting = functools.partial(journal.submitting, "u1", "2026-11-24T10:00", SENT)
        await commits(submitting, durable=True)
        await commits(functools.partial(journal.submitted, "u1", "job1", 1.0))
        commits.close()
    assert journal.durable_batches == [True, False]
    row = journal.get("u1")
    assert row is not None and row.state is State.SUBMITTED and row.job_id == "job1"


@pytest.mark.anyio
async def test_a_failing_call_raises_to_its_caller_only_and_leaves_nothing_half_done(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    commits = GroupCommit(journal)

    def half_then_fail() -> None:
        journal.submitting("broken", "2026-11-24T10:00:00+00:00", SENT)
        raise OSError("disk trouble")

    outcomes: dict[str, object] = {}

    async def call(name: str, run: functools.partial[None]) -> None:
        try:
            outcomes[name] = await commits(run)
        except StorageError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as writer:
        await writer.start(commits.run)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", functools.partial(journal.submitting, "a", "t", SENT))
            tg.start_soon(call, "broken", functools.partial(half_then_fail))
            tg.start_soon(call, "last", functools.partial(journal.submitting, "b", "t", SENT))
        commits.close()
    # A local fault, in one line, raised from what the system said.
    broken = outcomes["broken"]
    assert isinstance(broken, StorageError) and isinstance(broken.__cause__, OSError)
    assert "disk trouble" in str(broken) and "\n" not in str(broken)
    assert outcomes["first"] is None and outcomes["last"] is None
    assert journal.get("broken") is None  # its own write was rolled back
    assert journal.get("a") is not None and journal.get("b") is not None


@pytest.mark.anyio
async def test_calls_before_the_writer_starts_or_after_it_ends_still_run(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    commits = GroupCommit(journal)
    await commits(functools.partial(journal.submitting, "early", "t", SENT), durable=True)
    async with anyio.create_task_group() as writer:
        await writer.start(commits.run)
        commits.close()
    await commits(functools.partial(journal.submitted, "early", "job", None))
    row = journal.get("early")
    assert row is not None and row.job_id == "job"
    assert commits.batches == 0
