"""What a manifest is made of: its entries, the sizes they ask for, and the work units
they expand into.  Plain records, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .naming import DEFAULT_FILENAME, FileNameTemplate


@dataclass(frozen=True, slots=True)
class Size:
    """How big an image is asked for: a width and height, an aspect ratio (``16:9``), or
    nothing (the model's own default).  Which a model takes is its input list's say."""

    width: int | None = None
    height: int | None = None
    ratio: str | None = None
    # Where the manifest gives it, for messages (0 and "" when it is the default).
    line: int = 0
    field: str = ""

    def body(self) -> dict[str, Any]:
        if self.ratio is not None:
            return {"aspectRatio": self.ratio}
        if self.width is not None and self.height is not None:
            return {"width": self.width, "height": self.height}
        return {}

    @property
    def key(self) -> tuple[int | None, int | None, str | None]:
        return (self.width, self.height, self.ratio)

    def canonical(self) -> str:
        """Its part of the canonical request (see :func:`canonical_request`): ``w,h`` as
        ever, so the ids of width/height units never change; a ratio or no size are
        spelled so no width/height pair can be mistaken for them."""
        if self.ratio is not None:
            return f"{json.dumps(self.ratio)},null"
        if self.width is not None and self.height is not None:
            return f"{self.width},{self.height}"
        return "null,null"

    def __str__(self) -> str:
        if self.ratio is not None:
            return self.ratio
        if self.width is not None:
            return f"{self.width}x{self.height}"
        return "the model's default size"


NO_SIZE = Size()


@dataclass(frozen=True, slots=True)
class ImageInput:
    """Images a model input receives: the same files for every unit of an entry, or
    for each prompt of a prompts file the file its ``column`` names (relative to the
    manifest).  ``many``: given as a list (an input of ``type: file_array``)."""

    name: str
    files: tuple[Path | str, ...] = ()  # a str is a URL, fetched before anything is sent
    many: bool = False
    column: str | None = None
    line: int = 0
    field: str = ""


@dataclass(frozen=True, slots=True)
class InputImage:
    """One image a unit sends: where it is, and what it is (its sha256, which is what
    the unit's id covers: moving the folder changes nothing, changing the file does)."""

    path: Path
    sha256: str
    size: int
    # The address it was fetched from, for an image given by URL.
    source: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of ``jobs:`` with the manifest's defaults already applied."""

    index: int
    line: int
    label: str
    explicit_id: bool
    model: str
    sizes: tuple[Size, ...]
    params: Mapping[str, Any]
    count: int
    prompt: str | None = None
    prompt_line: int = 0
    prompts_file: Path | None = None
    variables: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # Where each param is given, for messages: name -> (line, field path).
    param_places: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    model_line: int = 0
    model_field: str = "model"
    # A prompts file's caption column, and the extra columns kept (None: all of them).
    prompt_column: str = "prompt"
    columns: tuple[str, ...] | None = None
    # ``images:``: one unit per file (times the prompts, sizes and count), sent to the
    # model input ``image_input``; and the images given to other inputs.
    images: tuple[Path | str, ...] = ()  # a str is a URL, fetched before anything is sent
    image_input: str = "image"
    images_line: int = 0
    inputs: tuple[ImageInput, ...] = ()
    quality: QualityRule | None = None

    @property
    def units_per_prompt(self) -> int:
        """Units each of its prompts makes: its sizes, times its count, times its images."""
        return len(self.sizes) * self.count * max(1, len(self.images))


@dataclass(frozen=True, slots=True)
class QualityRule:
    """``quality:``: each image of a unit scored by Scenario's quality gate, and what a
    verdict leads to.  ``regenerate``: the unit makes another job with a new seed (the
    rejected image kept aside), at most ``attempts`` times; ``keep``: it is kept, marked.
    A score below ``min_score`` counts as a fail."""

    sensitivity: str | None = None  # low, medium, high; None: the API's own setting
    on_fail: str = "regenerate"
    on_warn: str = "keep"
    attempts: int = 1
    min_score: float | None = None

    def judged(self, verdict: str, score: float) -> str:
        """The verdict as this rule reads it: a fail below ``min_score`` too."""
        if self.min_score is not None and score < self.min_score:
            return "fail"
        return verdict

    @property
    def regenerates(self) -> bool:
        """Whether a verdict may make another job (to count the worst case)."""
        return self.attempts > 0 and "regenerate" in (self.on_fail, self.on_warn)

    def again(self, verdict: str, score: float, attempt: int) -> bool:
        """Whether the unit makes another job after this verdict on attempt ``attempt``
        (0: its first job)."""
        judged = self.judged(verdict, score)
        action = {"fail": self.on_fail, "warn": self.on_warn}.get(judged, "keep")
        return action == "regenerate" and attempt < self.attempts


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    entries: tuple[Entry, ...]
    # A directory, or an object storage URL (s3://, gs://) as written.
    output: Path | str | None = None
    # Why the manifest's output may not be used (an absolute path, or one climbing out
    # of the manifest's folder with ".."): a manifest does not choose to write outside
    # its own folder; the command line's --out can.  The error, at its line.
    output_refused: str | None = None
    concurrency: int | None = None
    filename: FileNameTemplate = DEFAULT_FILENAME
    # The URL each fetched image came from, by the path of its local copy.
    image_sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unit:
    """One generation job to make."""

    id: str
    entry: str
    model: str
    prompt: str
    width: int | None
    height: int | None
    params: Mapping[str, Any]
    repeat: int
    source: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Its place in the manifest's order (0, 1, ...), for file names.
    index: int = 0
    aspect_ratio: str | None = None
    # The images it sends, by model input: (input, images, given as a list).  Their
    # asset ids are known only once they are uploaded (see batchgen.engine.uploads).
    inputs: tuple[tuple[str, tuple[InputImage, ...], bool], ...] = ()
    # Its images' quality gate, if the manifest asks for one (not part of its id).
    quality: QualityRule | None = None

    def request_body(self) -> dict[str, Any]:
        """What the manifest asks for (``seed: random`` leaves the seed to the API)."""
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.aspect_ratio is not None:
            body["aspectRatio"] = self.aspect_ratio
        elif self.width is not None and self.height is not None:
            body["width"], body["height"] = self.width, self.height
        body.update(self.params)
        if body.get("seed") == "random":
            del body["seed"]
        return body
