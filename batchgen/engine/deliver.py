"""What follows a job that succeeded: its images downloaded (with the inputs it was
made from kept beside them), scored by the quality gate where the manifest asks, and
the unit's end recorded in the journal."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from ..config import RetrySettings
from ..errors import ApiError, DownloadError
from ..manifest import Unit
from ..retry import describe
from ..scenario.inputs import MAX_OUTPUTS_PER_JOB, OUTPUTS_INPUT
from ..scenario.records import JobRecord
from ..store.commits import GroupCommit
from ..store.faults import storage_faults
from ..store.files import INPUTS_DIR, keep_copy, real_directory, stamp_of
from ..store.journal import Journal
from ..store.results import UnitResult, embed_into_files, story_of, with_story
from .download import AssetResolver, download_job
from .gate import Gate, set_aside
from .ports import Api, Fetcher, Offload
from .settings import EngineSettings
from .summary import Summary
from .uploads import Uploader

log = logging.getLogger(__name__)

# The quality gate's verdicts, worst first.
RANK = {"fail": 0, "warn": 1, "pass": 2}


class Delivery:
    def __init__(
        self,
        api: Api,
        fetcher: Fetcher,
        journal: Journal,
        commits: GroupCommit,
        settings: EngineSettings,
        retry: RetrySettings,
        rng: random.Random,
        offload: Offload,
        summary: Summary,
        *,
        gate: Gate,
        uploader: Uploader,
    ) -> None:
        self._api = api
        self._fetcher = fetcher
        self._journal = journal
        self._commits = commits
        self._settings = settings
        self._retry = retry
        self._rng = rng
        self._offload = offload
        self.summary = summary
        self.gate = gate
        self.uploader = uploader
        self.resolver = AssetResolver(api, retry, rng)
        # Download slots: D of them, each from its URL lookups to its files verified.
        self._downloads = anyio.CapacityLimiter(settings.download_workers)

    async def download(
        self, unit: Unit, job: JobRecord, cost: float | None, own_files: frozenset[str]
    ) -> UnitResult:
        self.summary.downloading += 1
        try:
            async with self._downloads:
                got = await download_job(
                    unit,
                    job,
                    api=self._api,
                    resolver=self.resolver,
                    fetcher=self._fetcher,
                    output_dir=self._settings.output_dir,
                    filename=self._settings.filename,
                    own_files=own_files,
                    retry=self._retry,
                    rng=self._rng,
                    asked=self.asked(unit),
                )
        except (ApiError, DownloadError) as exc:
            return UnitResult.failure(
                unit, job_id=job.job_id, error=describe(exc), cost=cost, job_status=job.status
            )
        finally:
            self.summary.downloading -= 1
        asked = unit.params.get("seed")
        seed = asked if isinstance(asked, int) and not isinstance(asked, bool) else got.seed
        inputs = await self._keep_inputs(unit) if unit.inputs else None
        result = UnitResult.success(
            unit,
            job_id=job.job_id,
            files=got.files,
            cost=cost,
            seed=seed,
            sizes=got.sizes,
            inputs=inputs,
        )
        if got.not_kept:
            result = dataclasses.replace(result, not_kept=got.not_kept)
        if self._settings.embed_metadata:
            result = await self._with_story(result)
        return result

    async def _with_story(self, result: UnitResult) -> UnitResult:
        """``--embed-metadata``: the unit's files rewritten with their story in."""
        if self._settings.rewrite is None:  # in the output directory
            told: UnitResult = await self._offload(
                embed_into_files, result, self._settings.output_dir
            )
            return told
        change = story_of(result.to_json())
        files = [
            (relative, await self._settings.rewrite(relative, change))
            for relative, _ in result.files
        ]
        return with_story(result, files)

    def asked(self, unit: Unit) -> int:
        return images_asked(unit, self._settings.outputs)

    async def _keep_inputs(self, unit: Unit) -> dict[str, list[dict[str, Any]]]:
        """A copy of each image the unit was made from, in ``inputs/`` (of the output
        directory, or of the bucket), so that the dataset holds its pairs; and what
        each was."""
        copy_here = self._settings.keep_input is None
        kept: dict[str, list[dict[str, Any]]]
        kept, copies = await self._offload(self._input_records, unit, copy_here)
        if self._settings.keep_input is not None:
            for source, relative in copies:
                await self._settings.keep_input(source, relative)
        return kept

    def _input_records(
        self, unit: Unit, copy_here: bool
    ) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[Path, str]]]:
        out = self._settings.output_dir
        kept: dict[str, list[dict[str, Any]]] = {}
        copies: list[tuple[Path, str]] = []
        for name, images, _ in unit.inputs:
            kept[name] = []
            for image in images:
                relative = f"{INPUTS_DIR}/{image.sha256}{image.path.suffix.lower()}"
                copies.append((image.path, relative))
                if copy_here:
                    with storage_faults(out / INPUTS_DIR):
                        keep_copy(image.path, real_directory(out, INPUTS_DIR) / Path(relative).name)
                kept[name].append(
                    {
                        "path": image.source or str(image.path),
                        "sha256": image.sha256,
                        "asset_id": self.uploader.asset_of(image.sha256)
                        or (self._journal.upload(image.sha256) or ("", None, None))[1],
                        "file": relative,
                    }
                )
        return kept, copies

    async def gated(
        self, unit: Unit, job: JobRecord, result: UnitResult, attempt: int
    ) -> tuple[UnitResult, bool]:
        """The gate's verdict on the unit's images (the worst of them), and whether the
        unit makes another job: then its images are set aside, never deleted."""
        rule = unit.quality
        assert rule is not None
        asset_ids = job.asset_ids[: self.asked(unit)]
        if not asset_ids:
            log.warning("unit %s: its job names no asset: its images are not gated", unit.id)
            return result, False
        verdicts = [await self.gate.verdict(unit.id, a, attempt, rule) for a in asset_ids]
        worst = min(verdicts, key=lambda v: (RANK[rule.judged(v.verdict, v.score)], v.score))
        judged = rule.judged(worst.verdict, worst.score)
        mark = {"verdict": judged, "score": worst.score, "reasons": list(worst.reasons)}
        result = dataclasses.replace(result, quality={**mark, "attempt": attempt})
        if not rule.again(worst.verdict, worst.score, attempt):
            return result, False
        files = [path for path, _ in result.files]
        if self._settings.set_aside is not None:  # an output in a bucket
            aside = await self._settings.set_aside(files, attempt)
        else:
            aside = await self._offload(set_aside, self._settings.output_dir, files, attempt)
        why = f"quality gate: {judged} (score {worst.score:g}); made again, attempt {attempt + 1}"
        await self._commits(
            functools.partial(self._journal.regenerating, unit.id, attempt + 1, why)
        )
        self.summary.regenerating += 1
        log.info("unit %s: %s; its images kept in %s", unit.id, why, ", ".join(aside))
        return result, True

    def record(self, result: UnitResult) -> None:
        if result.status == "success":
            out = self._settings.output_dir
            # Runs where the journal's commits run: the stat calls stay off the loop.
            stamps: list[tuple[int, int]] | None
            if self._settings.stamp is not None:
                found = [self._settings.stamp(out, path) for path, _ in result.files]
                stamps = None if None in found else [s for s in found if s is not None]
            else:
                try:
                    stamps = [stamp_of(out / path) for path, _ in result.files]
                except OSError:
                    stamps = None  # gone already: the next run finds out and fetches it again
            self._journal.downloaded(
                result.unit.id,
                list(result.files),
                result.to_json(),
                stamps,
                refundable=result.refundable,
            )
        else:
            self._journal.failed(
                result.unit.id,
                error=result.error or "",
                permanent=result.permanent,
                job_id=result.job_id,
                job_status=result.job_status,
                result=result.to_json(),
                refundable=result.refundable,
            )


def images_asked(unit: Unit, outputs: Mapping[str, int]) -> int:
    """The images a unit's job is to make: its numOutputs, else its model's."""
    given = unit.params.get(OUTPUTS_INPUT)
    if isinstance(given, int | float) and not isinstance(given, bool) and given >= 1:
        return int(given)
    return outputs.get(unit.model, MAX_OUTPUTS_PER_JOB)
