"""Every unit of a manifest checked against its model's inputs, before anything is sent.

Pure code: it is handed the models' input lists (:class:`~batchgen.inputs.ModelSpec`).
A 100,000-unit run would otherwise learn of a field its model refuses 100,000 times,
in a 400 per unit, or after half the batch had been paid for.

What varies from unit to unit is only the prompt (and a seed drawn per unit), so the
rest of each body (the entry's params and size) is checked once per entry and size,
and each prompt once; a seed drawn per unit is checked as the range it is drawn from.
Each problem names the file, the line and the field where the manifest (or the
prompts file) gives what the model would refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_UNITS
from ..errors import ConfigError
from ..manifest import (
    PER_UNIT_SEED,
    RANDOM_SEED,
    SEED_MASK,
    Entry,
    Manifest,
    Size,
    UnitBound,
    iter_entry_prompts,
)
from .inputs import (
    FILE_TYPES,
    PROMPT_INPUT,
    RATIO_INPUT,
    SEED_INPUT,
    SIZE_INPUTS,
    ModelSpec,
    field_problem,
    missing,
    value_problem,
)

# Problems shown at most; the count says how many more there are.
PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.message}"


class ModelInputsError(ConfigError):
    """What the models would refuse, one line per problem (exit 2; nothing was sent)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [str(problem) for problem in problems[:PROBLEMS_SHOWN]]
        if len(problems) > PROBLEMS_SHOWN:
            lines.append(f"... and {len(problems) - PROBLEMS_SHOWN} more")
        count = len(problems)
        lines.append(
            f"{count} problem{'s' if count != 1 else ''} with the models' inputs; "
            "nothing was sent (batchgen models MODEL_ID shows what a model takes)"
        )
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Prompts:
    """What a pass over an entry's prompts learned: how many, and how long the shortest
    and the longest are (all that a model's input list can refuse in a prompt)."""

    count: int = 0
    shortest: int = 0
    longest: int = 0


def read_prompts(manifest: Manifest, max_units: int = DEFAULT_MAX_UNITS) -> list[Prompts]:
    """One pass over every prompt of the manifest, with no model in hand: it finds the
    manifest's own errors (raised at their line) before anything is asked of the API,
    and what :func:`check_manifest` needs to check the prompts without reading them
    again unless one of them is at fault."""
    found = []
    bound = UnitBound(manifest, max_units)
    for entry in manifest.entries:
        count, shortest, longest = 0, 0, 0
        for prompt, _, _ in iter_entry_prompts(manifest, entry):
            bound.add(entry)
            size = len(prompt)
            if not count or size < shortest:
                shortest = size
            longest = max(longest, size)
            count += 1
        found.append(Prompts(count, shortest, longest))
    return found


def check_manifest(
    manifest: Manifest,
    specs: Mapping[str, ModelSpec],
    problems: Iterable[Problem] = (),
    prompts: list[Prompts] | None = None,
) -> int:
    """Check every unit against its model; the number of units.  Raises
    :class:`ModelInputsError` listing every problem found (``problems`` are ones found
    already, such as models the API does not know: their units are not checked).
    ``prompts`` is :func:`read_prompts`'s pass, made here if not given; the prompts of
    an entry are read again only to say which lines the model would refuse."""
    if prompts is None:
        prompts = read_prompts(manifest)
    found: dict[tuple[str, int | None, str, str], Problem] = {}
    for problem in problems:
        found[(problem.path, problem.line, problem.field, problem.message)] = problem

    def note(path: str, line: int | None, field: str, message: str) -> None:
        found.setdefault((path, line, field, message), Problem(path, line, field, message))

    path = str(manifest.path)
    total = 0
    for entry, seen in zip(manifest.entries, prompts, strict=True):
        total += seen.count * entry.units_per_prompt
        spec = specs.get(entry.model)
        if spec is None:
            continue
        for problem in _fixed_part(path, entry, spec):
            note(problem.path, problem.line, problem.field, problem.message)
        prompt_input = spec.inputs.get(PROMPT_INPUT)
        if prompt_input is None:
            note(path, entry.line, f"jobs[{entry.index}]", f"{spec.id} takes no prompt")
            continue
        extremes = ("x" * seen.shortest, "x" * seen.longest) if seen.count else ()
        if not any(value_problem(prompt_input, text) for text in extremes):
            continue
        for prompt, _, source in iter_entry_prompts(manifest, entry):
            message = value_problem(prompt_input, prompt)
            if message:
                prompt_path, _, prompt_line = source.rpartition(":")
                note(prompt_path, int(prompt_line), "prompt", message)
    if found:
        raise ModelInputsError(list(found.values()))
    return total


def _fixed_part(path: str, entry: Entry, spec: ModelSpec) -> list[Problem]:
    """Problems with an entry's params and sizes, the same for all its prompts."""
    problems: list[Problem] = []
    name = f"jobs[{entry.index}]"
    params = dict(entry.params)
    if params.get(SEED_INPUT) == RANDOM_SEED:
        del params[SEED_INPUT]  # nothing is sent: the API chooses
    if params.get(SEED_INPUT) == PER_UNIT_SEED:
        params[SEED_INPUT] = 0  # one seed drawn; the range is checked below
        problems += _per_unit_seed(path, entry, spec)
    for param, value in params.items():
        message = field_problem(spec, param, value)
        if message:
            line, where = entry.param_places.get(param, (entry.line, f"{name}.params.{param}"))
            problems.append(Problem(path, line, where, message))
    problems += _image_problems(path, entry, spec)
    given_images = {name: "asset" for name in _image_input_names(entry)}
    for size in entry.sizes:
        problems += _size_problems(path, entry, size, spec)
        body: dict[str, Any] = {PROMPT_INPUT: "", **size.body(), **params, **given_images}
        for input_name, message in missing(spec, body):
            if input_name in SIZE_INPUTS or input_name == RATIO_INPUT:
                message += f"; give {_size_advice(spec)}"
            problems.append(Problem(path, size.line or entry.line, size.field or name, message))
    return problems


def _image_input_names(entry: Entry) -> list[str]:
    return ([entry.image_input] if entry.images else []) + [given.name for given in entry.inputs]


# The first bytes of the image files the API takes.
IMAGE_STARTS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def _image_problems(path: str, entry: Entry, spec: ModelSpec) -> list[Problem]:
    """Images given to inputs that take them: the input must be one of the model's
    image inputs, take as many as are given, and each file be an image small enough."""
    problems: list[Problem] = []
    name = f"jobs[{entry.index}]"
    given = [(entry.image_input, entry.images, False, entry.images_line, f"{name}.images")]
    given = [g for g in given if g[1]] + [
        (g.name, g.files, g.many, g.line, g.field) for g in entry.inputs
    ]
    takes = [i.name for i in spec.inputs.values() if i.type in FILE_TYPES]
    for input_name, files, many, line, where in given:
        item = spec.inputs.get(input_name)
        if item is None or item.type not in FILE_TYPES:
            what = "no input" if item is None else "no image in the input"
            offer = f"its image inputs: {', '.join(takes)}" if takes else "it takes no image"
            problems.append(
                Problem(path, line, where, f"{spec.id} takes {what} {input_name!r}; {offer}")
            )
            continue
        if many and item.type == "file":
            problems.append(Problem(path, line, where, f"{input_name} takes one image, not a list"))
        if item.type == "file_array" and item.max_length and len(files) > item.max_length:
            problems.append(
                Problem(path, line, where, f"{input_name} takes at most {item.max_length} images")
            )
        for file in files:
            if isinstance(file, str):
                continue  # a URL: checked as it is fetched
            message = _image_file_problem(file, item.max_size)
            if message:
                problems.append(Problem(path, line, where, f"{file.name}: {message}"))
    return problems


def _image_file_problem(file: Path, max_size: int | None) -> str | None:
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        return exc.strerror or str(exc)
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if not (head.startswith(IMAGE_STARTS) or webp):
        return "not a PNG, JPEG, WebP or GIF image"
    if max_size is not None and size > max_size:
        return f"{size:,} bytes, more than the input's maxSize of {max_size:,}"
    return None


def _size_problems(path: str, entry: Entry, size: Size, spec: ModelSpec) -> list[Problem]:
    line, where = size.line or entry.line, size.field or f"jobs[{entry.index}]"
    forms = spec.size_forms
    if size.ratio is not None and RATIO_INPUT not in forms:
        return [Problem(path, line, where, f"{spec.id} takes no aspect ratio; give "
                        f"{_size_advice(spec)}")]  # fmt: skip
    if size.width is not None and "width/height" not in forms:
        return [Problem(path, line, where, f"{spec.id} takes no width/height; give "
                        f"{_size_advice(spec)}")]  # fmt: skip
    problems = []
    for input_name, value in size.body().items():
        message = value_problem(spec.inputs[input_name], value)
        if message:
            problems.append(Problem(path, line, where, f"{input_name} {message}"))
    return problems


def _size_advice(spec: ModelSpec) -> str:
    forms = spec.size_forms
    if RATIO_INPUT in forms:
        ratio = spec.inputs[RATIO_INPUT]
        choices = f" ({ratio.describe_range()})" if ratio.allowed_values else ""
        return f'an aspect ratio, e.g. aspect_ratio: "16:9"{choices}'
    if forms:
        return "width and height"
    return "no size: it takes none"


def _per_unit_seed(path: str, entry: Entry, spec: ModelSpec) -> list[Problem]:
    item = spec.inputs.get(SEED_INPUT)
    line, where = entry.param_places.get(SEED_INPUT, (entry.line, f"jobs[{entry.index}]"))
    if item is None:
        return []  # reported as a field the model does not take
    low = item.minimum if item.minimum is not None else 0
    high = item.maximum if item.maximum is not None else SEED_MASK
    if low > 0 or high < SEED_MASK:
        return [
            Problem(
                path,
                line,
                where,
                f"{PER_UNIT_SEED!r} draws seeds from 0 to {SEED_MASK}, and {spec.id} takes "
                f"{item.describe_range()}: give a fixed seed",
            )
        ]
    return []
