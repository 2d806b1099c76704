"""``<out>/results.jsonl``: one JSON object per unit, a view of the journal.

It is brought up to date from the journal whenever a run ends, interrupted or not
(:mod:`.views`: appended to when only new units finished, rewritten in the order units
first appeared when a line shown changed), always atomically, and keeps units that are
no longer in the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import Unit
from .embed import embed
from .files import open_regular, write_bytes_atomically, write_lines_atomically

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True, slots=True)
class UnitResult:
    unit: Unit
    status: str
    job_id: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    cost: float | None = None
    error: str | None = None
    job_status: str | None = None
    # A failure that the same request would meet again (400, 403, 404).
    permanent: bool = False
    # Whether its job's failure is refunded (the job's billing; None: not known).
    refundable: bool | None = None
    # The seed the images were made with, when known.
    seed: int | None = None
    # Each file's own (width, height), when known: a model given an aspect ratio picks
    # the pixels, and the size asked for is not always the size made.
    sizes: tuple[tuple[int, int] | None, ...] = ()
    # The images it was made from, by model input: each one's path as given, sha256,
    # asset id and copy in the output directory (``inputs/<sha256>.<ext>``).
    inputs: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The sha256 of each image as served, when its file has had its story written in
    # (``--embed-metadata``: the file's own sha256 is then in ``files``).
    served_sha256: tuple[str, ...] = ()
    # Images its job listed beyond those asked for: counted, not downloaded.
    not_kept: int = 0
    # The quality gate's word on its images: verdict, score, reasons, attempt.
    quality: Mapping[str, Any] | None = None

    @classmethod
    def success(
        cls,
        unit: Unit,
        *,
        job_id: str,
        files: list[tuple[str, str]],
        cost: float | None,
        seed: int | None = None,
        sizes: list[tuple[int, int] | None] | None = None,
        inputs: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> UnitResult:
        return cls(
            unit=unit,
            status="success",
            job_id=job_id,
            files=tuple(files),
            cost=cost,
            job_status="success",
            seed=seed,
            sizes=tuple(sizes or ()),
            inputs=inputs or {},
        )

    @classmethod
    def failure(
        cls,
        unit: Unit,
        *,
        error: str,
        job_id: str | None = None,
        cost: float | None = None,
        job_status: str | None = None,
        permanent: bool = False,
        refundable: bool | None = None,
    ) -> UnitResult:
        return cls(
            unit=unit,
            status="failure",
            job_id=job_id,
            error=error,
            cost=cost,
            job_status=job_status,
            permanent=permanent,
            refundable=refundable,
        )

    def to_json(self) -> dict[str, Any]:
        unit = self.unit
        first = next((size for size in self.sizes if size is not None), None)
        width, height = first or (unit.width, unit.height)
        return {
            "id": unit.id,
            "status": self.status,
            "entry": unit.entry,
            "model": unit.model,
            "prompt": unit.prompt,
            "width": width,
            "height": height,
            "aspect_ratio": unit.aspect_ratio,
            "sizes": [list(size) if size else None for size in self.sizes],
            "params": dict(unit.params),
            "seed": self.seed,
            "repeat": unit.repeat,
            "job_id": self.job_id,
            "job_status": self.job_status,
            "files": [path for path, _ in self.files],
            "sha256": [digest for _, digest in self.files],
            "cost": self.cost,
            "error": self.error,
            "permanent": self.permanent,
            **({"inputs": dict(self.inputs)} if self.inputs else {}),
            **({"served_sha256": list(self.served_sha256)} if self.served_sha256 else {}),
            **({"images_not_kept": self.not_kept} if self.not_kept else {}),
            **(
                {
                    "quality_verdict": self.quality["verdict"],
                    "quality_score": self.quality["score"],
                    "quality_reasons": list(self.quality["reasons"]),
                    "quality_attempt": self.quality["attempt"],
                }
                if self.quality
                else {}
            ),
            "metadata": dict(unit.metadata),
            "source": unit.source,
        }


def story_of(row: Mapping[str, Any]) -> Callable[[bytes], bytes]:
    """How each image of a unit (``row``: its results line) gets its story written in
    (:mod:`.embed`): the size told is its first image's."""
    size = next((s for s in row.get("sizes") or [] if s), None)
    told = {**row, **({"width": size[0], "height": size[1]} if size else {})}
    return functools.partial(embed, row=told)


def rewrite_file(path: Path, change: Callable[[bytes], bytes]) -> str:
    """A file replaced by ``change`` of its bytes, in one rename (blocking); its new
    sha256."""
    with open_regular(path) as image:
        written = change(image.read())
    write_bytes_atomically(path, written)
    return hashlib.sha256(written).hexdigest()


def with_story(result: UnitResult, files: Iterable[tuple[str, str]]) -> UnitResult:
    """The result, its files as rewritten with their story (their new sha256), the
    served ones' kept."""
    as_served = tuple(digest for _, digest in result.files)
    return dataclasses.replace(result, files=tuple(files), served_sha256=as_served)


def embed_into_files(result: UnitResult, out_dir: Path) -> UnitResult:
    """The result, its files in ``out_dir`` with their story written in (blocking)."""
    change = story_of(result.to_json())
    return with_story(
        result,
        [(relative, rewrite_file(out_dir / relative, change)) for relative, _ in result.files],
    )


def write_results(lines: Iterable[str], out_dir: Path) -> Path:
    """Replace ``results.jsonl`` with these lines, atomically."""
    return write_lines_atomically(out_dir / RESULTS_NAME, lines)
