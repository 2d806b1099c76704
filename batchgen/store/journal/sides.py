"""The journal's side tables: each image the quality gate was asked about, and each
input image uploaded."""

from __future__ import annotations

import json
import time

from ...redact import redact
from .schema import JournalBase, State


class SideTables(JournalBase):
    # ---------------------------------------------------------------- quality gate

    def gate_of(self, asset_id: str) -> tuple[str | None, float | None, str | None] | None:
        """(verdict, score, reasons as JSON) of an image the gate was asked about (a
        verdict of None: asked, its answer not known), or None if never asked."""
        with self._lock:
            found = self._db.execute(
                "SELECT verdict, score, reasons FROM gates WHERE asset_id = ?", (asset_id,)
            ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def gating(self, unit_id: str, asset_id: str, attempt: int) -> None:
        """Before a gate call is sent (fsynced, as a submission is: it is paid)."""
        self._write_durably(
            (
                "INSERT OR IGNORE INTO gates (asset_id, unit_id, attempt) VALUES (?, ?, ?)",
                (asset_id, unit_id, attempt),
            )
        )

    def gated(
        self,
        unit_id: str,
        asset_id: str,
        verdict: str,
        score: float,
        reasons: list[str],
        cost: float | None,
    ) -> None:
        """The gate's verdict on an image, and its charge booked (as a job's)."""
        charge = f"gate:{asset_id}"
        self._write(
            (
                "UPDATE gates SET verdict = ?, score = ?, reasons = ? WHERE asset_id = ?",
                (verdict, score, json.dumps(reasons), asset_id),
            ),
            ("INSERT OR IGNORE INTO jobs (job_id, unit_id) VALUES (?, ?)", (charge, unit_id)),
            self._job(charge, cost, "success"),
        )

    def regenerating(self, unit_id: str, attempt: int, error: str) -> None:
        """The gate rejected the unit's image: it makes job ``attempt`` (its images moved
        aside); until that is submitted, the unit is to be submitted again."""
        self._write(
            (
                "UPDATE units SET state = ?, job_id = NULL, job_status = NULL, permanent = 0,"
                " quality_attempt = ?, error = ?, files = NULL, updated = ? WHERE id = ?",
                (State.FAILED, attempt, redact(error), time.time(), unit_id),
            )
        )

    def upload(self, sha256: str) -> tuple[str, str | None, str | None] | None:
        """(name, asset id, when its last upload was sent) of an input image, if it was
        ever sent."""
        with self._lock:
            found = self._db.execute(
                "SELECT name, asset_id, started FROM uploads WHERE sha256 = ?", (sha256,)
            ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def uploading(self, sha256: str, name: str, started: str, size: int) -> None:
        """Before an image's upload is sent (fsynced, as ``submitting`` is)."""
        self._write_durably(
            (
                "INSERT INTO uploads (sha256, name, size, started) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256) DO UPDATE SET started = excluded.started",
                (sha256, name, size, started),
            )
        )

    def uploaded(self, sha256: str, asset_id: str) -> None:
        self._write(
            (
                "UPDATE uploads SET asset_id = ?, started = NULL WHERE sha256 = ?",
                (asset_id, sha256),
            )
        )
