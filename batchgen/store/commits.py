"""Group commit: journal calls from many tasks share one thread hop and one transaction.

Every journal call the engine makes goes through :class:`GroupCommit`.  One task runs
them in a worker thread, in the order they were made, all that arrived while the
previous batch ran together in one transaction (and at most one fsync, if any call in
it needs one).  Why: a commit is cheap, but each trip to a worker thread also waits for
the GIL while the event loop is busy, so a run that made one trip per transition spent
more time queueing for the thread than writing; jobs that finish in the same poll now
cost one trip for all their facts.

A caller is not answered before its call is committed, so "``submitting`` is on disk
before the POST" still holds.  Each call keeps its own transitions atomic (a savepoint),
and an error in one is raised to its caller only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from .faults import storage_error, storage_faults
from .journal import Journal

T = TypeVar("T")


@dataclass(slots=True)
class _Call(Generic[T]):
    run: Callable[[], T]
    durable: bool
    done: anyio.Event = field(default_factory=anyio.Event)
    result: T | None = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(
        self, journal: Journal, offload: Callable[..., Awaitable[Any]] | None = None
    ) -> None:
        self._journal = journal
        # Where the blocking commits run: a worker thread, or inline (tests on virtual
        # time, where a thread would let the clock jump while it works).
        self._offload = offload or anyio.to_thread.run_sync
        self._queue: list[_Call[Any]] = []
        self._wake = anyio.Event()
        self._closing = False
        self._running = False
        # Trips to the worker thread: what the batching saves is visible in tests.
        self.batches = 0

    async def __call__(self, run: Callable[[], T], *, durable: bool = False) -> T:
        """Run ``run`` (a blocking journal call) in the next batch; ``durable`` when its
        commit must be fsynced before the caller goes on."""
        if not self._running:
            # Before the writer starts or after it ended: on its own, same guarantees.
            return await self._offload(self._alone, run, durable)
        call: _Call[T] = _Call(run, durable)
        self._queue.append(call)
        self._wake.set()
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: runs until :meth:`close` and every call made before it is done."""
        self._running = True
        task_status.started()
        try:
            while self._queue or not self._closing:
                if not self._queue:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                calls, self._queue = self._queue, []
                self.batches += 1
                # Not abandoned on cancellation: a commit that has begun completes.
                await self._offload(self._commit, calls)
                for call in calls:
                    call.done.set()
        finally:
            self._running = False

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def _alone(self, run: Callable[[], T], durable: bool) -> T:
        with storage_faults(self._journal.path), self._journal.batch(durable=durable):
            return run()

    def _commit(self, calls: list[_Call[Any]]) -> None:
        try:
            with self._journal.batch(durable=any(call.durable for call in calls)):
                for call in calls:
                    try:
                        with self._journal.each():
                            call.result = call.run()
                    except (OSError, sqlite3.Error) as exc:
                        if not self._journal.in_transaction:
                            raise  # the whole batch was undone: every call in it is lost
                        call.error = storage_error(exc, self._journal.path)
                    except Exception as exc:
                        call.error = exc
        except Exception as exc:
            # The commit itself failed: nothing of this batch was recorded.
            if isinstance(exc, OSError | sqlite3.Error):
                exc = storage_error(exc, self._journal.path)
            for call in calls:
                call.error = call.error or exc
