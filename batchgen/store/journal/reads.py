"""What the journal is asked: units, results, views, shapes, counts and money."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ...ledger import Spend, to_units
from .schema import (
    LOOKUP_CHUNK,
    NET_CHARGE,
    READ_PAGE,
    ROW_COLUMNS,
    JournalBase,
    Row,
    State,
    _row,
)


class JournalReads(JournalBase):
    # ---------------------------------------------------------------- reads

    def get(self, unit_id: str) -> Row | None:
        return self.get_many([unit_id]).get(unit_id)

    def get_many(self, unit_ids: list[str]) -> dict[str, Row]:
        """The rows of these units that the journal has, by id: one query for many."""
        rows = self._where_in(f"SELECT {ROW_COLUMNS} FROM units WHERE id IN", unit_ids)
        return {row[0]: _row(row) for row in rows}

    def states_of(self, unit_ids: list[str]) -> dict[str, Row]:
        """What decides what a run does with each of these units (its state, job and
        quality attempt), without its files or its request: a pass over a large journal
        (the estimate's) reads a few columns a row, not every one."""
        rows = self._where_in(
            "SELECT id, state, job_id, job_status, permanent, quality_attempt"
            " FROM units WHERE id IN",
            unit_ids,
        )
        return {
            found[0]: Row(
                id=found[0],
                state=State(found[1]),
                job_id=found[2],
                job_status=found[3],
                permanent=bool(found[4]),
                quality_attempt=found[5] or 0,
            )
            for found in rows
        }

    def job_owners(self, job_ids: list[str]) -> dict[str, str]:
        """The unit each of these jobs belongs to, for those that are some unit's."""
        return dict(self._where_in("SELECT job_id, unit_id FROM jobs WHERE job_id IN", job_ids))

    def _where_in(self, query: str, values: list[str]) -> list[tuple[Any, ...]]:
        """``query (?, ?, ...)`` for every chunk of ``values``: one query for many, within
        SQLite's limit on bound parameters."""
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            with self._lock:
                found += self._db.execute(
                    f"{query} ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
        return found

    def owns_job(self, job_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                is not None
            )

    def results(self) -> Iterator[str]:
        """The results line of every finished unit, in the order units first appeared."""
        for (line,) in self._paged("result", "result IS NOT NULL"):
            yield line

    def _paged(self, columns: str, where: str) -> Iterator[tuple[Any, ...]]:
        """Rows in journal order, read a page at a time: a run of millions of units is
        never in memory at once, and the lock is not held while the caller works."""
        after = 0
        while True:
            with self._lock:
                page = self._db.execute(
                    f"SELECT rowid, {columns} FROM units WHERE rowid > ? AND ({where})"
                    " ORDER BY rowid LIMIT ?",
                    (after, READ_PAGE),
                ).fetchall()
            for row in page:
                yield row[1:]
            if len(page) < READ_PAGE:
                return
            after = page[-1][0]

    def downloaded_files(self) -> Iterator[str]:
        """The recorded files (JSON, as kept) of every downloaded unit, a page at a time."""
        for (files,) in self._paged("files", f"state = '{State.DOWNLOADED.value}'"):
            yield files

    def downloaded_units(self) -> Iterator[tuple[str, str | None, str, str | None]]:
        """(unit id, job id, files as kept, results line) of every downloaded unit."""
        yield from self._paged("id, job_id, files, result", f"state = '{State.DOWNLOADED.value}'")

    def departed(self, current: Iterable[str]) -> Iterator[tuple[str, str | None]]:
        """(unit id, files as kept) of every unit not among ``current`` (the ids of a
        manifest's units, read once into a temporary table: memory does not grow with
        them), for :meth:`forget_departed`."""
        with self._lock:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS current (id TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM current")
            batch: list[tuple[str]] = []
            for unit_id in current:
                batch.append((unit_id,))
                if len(batch) >= READ_PAGE:
                    self._db.executemany("INSERT OR IGNORE INTO current VALUES (?)", batch)
                    batch.clear()
            self._db.executemany("INSERT OR IGNORE INTO current VALUES (?)", batch)
        yield from self._paged("id, files", "id NOT IN (SELECT id FROM temp.current)")

    def forget_departed(self) -> int:
        """Forget the units :meth:`departed` found: their rows go; the jobs they had stay
        theirs (a lost answer can never adopt one).  The views are rewritten next."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute(
                    "DELETE FROM units WHERE id NOT IN (SELECT id FROM temp.current)"
                ).rowcount
                self._db.execute("DELETE FROM meta WHERE key LIKE 'views:%'")
            except BaseException:
                self._rollback("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._db.execute("DROP TABLE temp.current")
        return int(gone)

    # ---------------------------------------------------------------- views

    def result_seq(self) -> int:
        """The number of the latest change to any unit's results line (0: none yet)."""
        with self._lock:
            found = self._db.execute("SELECT MAX(result_seq) FROM units").fetchone()[0]
        return int(found or 0)

    def changed_results(self, after: int) -> tuple[int, bool]:
        """Since change ``after``: the latest change, and whether it changed the line of
        a unit the views show (which must then be replaced, or go)."""
        with self._lock:
            latest, replaced = self._db.execute(
                "SELECT MAX(result_seq), MAX(shown) FROM units WHERE result_seq > ?", (after,)
            ).fetchone()
        return (after, False) if latest is None else (int(latest), bool(replaced))

    def results_changed(self, after: int, upto: int) -> Iterator[str]:
        """The results lines of the units changed after ``after`` up to ``upto``, in the
        order they changed, a page at a time."""
        while True:
            with self._lock:
                page = self._db.execute(
                    "SELECT result_seq, result FROM units WHERE result_seq > ?"
                    " AND result_seq <= ? ORDER BY result_seq LIMIT ?",
                    (after, upto, READ_PAGE),
                ).fetchall()
            for _, line in page:
                if line is not None:
                    yield line
            if len(page) < READ_PAGE:
                return
            after = page[-1][0]

    def mark_shown(self, upto: int, after: int | None = None) -> None:
        """The views now show the current results line of every unit changed after
        ``after`` (of every unit, if None) up to change ``upto``."""
        values: tuple[int, ...]
        if after is None:  # rows a journal of an earlier version numbered none of too
            where, values = "result_seq IS NULL OR result_seq <= ?", (upto,)
        else:
            where, values = "result_seq > ? AND result_seq <= ?", (after, upto)
        self._write((f"UPDATE units SET shown = (result IS NOT NULL) WHERE {where}", values))

    def shapes(self) -> list[tuple[str | None, Row, int]]:
        """(cost shape, a row standing for them, how many) of the units, grouped by what
        decides what a run does with them (see :func:`resume_action`); a shape of None:
        units recorded by an earlier version, or restored, whose shape is not known."""
        with self._lock:
            found = self._db.execute(
                "SELECT shape, state, job_id IS NOT NULL, job_status, permanent, COUNT(*)"
                " FROM units GROUP BY shape, state, job_id IS NOT NULL, job_status, permanent"
            ).fetchall()
        return [
            (
                shape,
                Row(
                    "",
                    State(state),
                    job_id="" if has_job else None,
                    job_status=job_status,
                    permanent=bool(permanent),
                ),
                count,
            )
            for shape, state, has_job, job_status, permanent, count in found
        ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM units GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def spent(self) -> float:
        """Creative units spent on this output in all, as the ledger has them: what the
        API charged for every job of every run, net of refunds."""
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM ledger").fetchone()
        return to_units(int(total))

    def possibly_spent(self) -> float:
        """What the jobs that uncertain units' lost answers may have made would cost (as
        priced by a dry run): not spent as far as anyone knows, but counted against a
        budget."""
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM units WHERE state = ?", (State.SUBMITTING,)
            ).fetchone()
        return float(total)

    def unpriced_jobs(self) -> int:
        """Jobs whose charge the API has not told (and that no refund made free)."""
        with self._lock:
            (count,) = self._db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE ({NET_CHARGE}) IS NULL"
            ).fetchone()
        return int(count)

    def spend(self) -> Spend:
        """Every figure about money, from the ledger: the last run's (the one going on,
        or the last that went), the output's in all, the jobs of unknown price, what
        lost answers may have cost."""
        with self._lock:
            (last,) = self._db.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE run = ?", (self.run,)
            ).fetchone()
        return Spend(
            this_run=to_units(int(last)),
            in_all=self.spent(),
            unpriced_jobs=self.unpriced_jobs(),
            possibly=self.possibly_spent(),
        )

    @property
    def run_spent(self) -> float:
        """What this run has booked to the ledger (committed): read without a query,
        so a progress display can show it as often as it likes."""
        return to_units(self._booked)

    def begin_run(self) -> int:
        """A new run: what it learns is booked to it from now on."""
        with self._lock:
            self.run += 1
            self._booked = self._booking = 0
            self._write(
                ("INSERT OR REPLACE INTO meta (key, value) VALUES ('run', ?)", (str(self.run),))
            )
        return self.run

    def unit_cost(self, unit_id: str) -> float | None:
        """What a unit has cost in all (every job it had, net of refunds); None while
        one of its jobs has an unknown price."""
        with self._lock:
            unknown, total = self._db.execute(
                f"SELECT SUM(({NET_CHARGE}) IS NULL),"
                " (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE job_id IN"
                " (SELECT job_id FROM jobs WHERE unit_id = ?)) FROM jobs WHERE unit_id = ?",
                (unit_id, unit_id),
            ).fetchone()
        return None if unknown else to_units(int(total))

    def failures(self) -> Iterator[tuple[str, str, bool, str | None]]:
        """(unit id, reason, permanent, job id) of every failed unit."""
        for unit_id, error, permanent, job_id in self._paged(
            "id, error, permanent, job_id", "state = 'failed'"
        ):
            yield unit_id, error or "", bool(permanent), job_id

    def quality_counts(self) -> dict[str, int]:
        """The quality gate's tally: units kept by their verdict (``pass``, ``warn``,
        ``fail``), and ``regenerating``: units whose image it rejected, their next job
        not done yet.  Empty for an output with no gate."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM gates LIMIT 1").fetchone() is None:
                return {}  # never gated: no results line to read
            kept = self._db.execute(
                "SELECT json_extract(result, '$.quality_verdict') AS verdict, COUNT(*)"
                " FROM units WHERE state = ? AND result IS NOT NULL AND verdict IS NOT NULL"
                " GROUP BY verdict",
                (State.DOWNLOADED,),
            ).fetchall()
            (again,) = self._db.execute(
                "SELECT COUNT(*) FROM units WHERE state != ? AND quality_attempt > 0",
                (State.DOWNLOADED,),
            ).fetchone()
        counts = {str(verdict): count for verdict, count in kept}
        return counts | ({"regenerating": again} if again else {})
