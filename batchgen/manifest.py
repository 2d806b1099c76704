"""Parse a YAML manifest into entries, and expand entries lazily into work units.

Pure code: no network, and the only files read are the manifest and the prompts files
it names.  Every error is a :class:`ManifestError` naming the file, the line and the
field, raised before anything is sent or written.

A work unit is one generation job.  Its id is a digest of the request it makes
(model, prompt, size, params) and of its repeat index, so the same manifest
always yields the same ids and a changed prompt or param yields a new unit.  The repeat
index counts identical requests in manifest order: ``count: 3`` gives repeats 0, 1, 2,
and a prompt that appears again later (in another entry or a prompts file) continues
the count instead of colliding.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import math
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, ManifestError
from .naming import DEFAULT_FILENAME, FileNameTemplate, parse_template

TOP_LEVEL_KEYS = (
    "model",
    "width",
    "height",
    "aspect_ratio",
    "params",
    "output",
    "filename",
    "concurrency",
    "jobs",
)
ENTRY_KEYS = (
    "id",
    "prompt",
    "prompts_file",
    "vars",
    "model",
    "width",
    "height",
    "aspect_ratio",
    "sizes",
    "params",
    "count",
)
# Set by their own fields; a second way to set them would make the digest ambiguous.
RESERVED_PARAMS = ("prompt", "width", "height", "aspectRatio")
RESERVED_FIELDS = {"aspectRatio": "aspect_ratio"}
ASPECT_RATIO_PATTERN = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")
PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")
SIZE_MULTIPLE = 16
MAX_COUNT = 100_000
MAX_CONCURRENCY = 1000
UNIT_ID_HEX_DIGITS = 20
# params.seed: per-unit derives each unit's seed from its id (see seed_for).
PER_UNIT_SEED = "per-unit"
SEED_MASK = 2**31 - 1
ENTRY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VAR_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    entries: tuple[Entry, ...]
    output: Path | None = None
    concurrency: int | None = None
    filename: FileNameTemplate = DEFAULT_FILENAME


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

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.aspect_ratio is not None:
            body["aspectRatio"] = self.aspect_ratio
        elif self.width is not None and self.height is not None:
            body["width"], body["height"] = self.width, self.height
        body.update(self.params)
        return body


# ---------------------------------------------------------------------------- parsing


class _Reader:
    """Walks a composed YAML node tree, turning nodes into values with located errors."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.display = str(path)
        self._constructor = yaml.SafeLoader(text)

    def fail(self, node: yaml.Node | None, field_name: str, message: str) -> ManifestError:
        line = node.start_mark.line + 1 if node is not None else None
        return ManifestError(self.display, line, field_name, message)

    def mapping(
        self, node: yaml.Node, field_name: str, allowed: tuple[str, ...]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, field_name, f"must be a mapping, got {_kind(node)}")
        self._constructor.flatten_mapping(node)
        result: dict[str, yaml.Node] = {}
        prefix = f"{field_name}." if field_name else ""
        for key_node, value_node in node.value:
            key = self.value(key_node, field_name or "key")
            if not isinstance(key, str):
                raise self.fail(key_node, field_name or "key", f"keys must be strings, got {key!r}")
            if allowed and key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.fail(
                    key_node,
                    f"{prefix}{key}",
                    f"unknown key{suggestion}; expected one of: {', '.join(allowed)}",
                )
            if key in result:
                raise self.fail(key_node, f"{prefix}{key}", "given twice")
            result[key] = value_node
        return result

    def value(self, node: yaml.Node, field_name: str) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(node, field_name, str(exc).splitlines()[0]) from exc

    def json_value(self, node: yaml.Node, field_name: str) -> Any:
        value = self.value(node, field_name)
        problem = _json_problem(value)
        if problem:
            raise self.fail(node, field_name, problem)
        return value

    def string(self, node: yaml.Node, field_name: str, *, allow_empty: bool = False) -> str:
        value = self.value(node, field_name)
        if not isinstance(value, str):
            raise self.fail(node, field_name, f"must be a string, got {_type_name(value)}")
        if not allow_empty and not value.strip():
            raise self.fail(node, field_name, "must not be empty")
        return value

    def integer(self, node: yaml.Node, field_name: str, *, minimum: int, maximum: int) -> int:
        value = self.value(node, field_name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, field_name, f"must be a whole number, got {_type_name(value)}")
        if not minimum <= value <= maximum:
            raise self.fail(
                node, field_name, f"must be between {minimum} and {maximum}, got {value}"
            )
        return value

    def dimension(self, node: yaml.Node, field_name: str) -> int:
        value = self.value(node, field_name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, field_name, f"must be a whole number, got {_type_name(value)}")
        if value <= 0 or value % SIZE_MULTIPLE:
            raise self.fail(
                node, field_name, f"must be a positive multiple of {SIZE_MULTIPLE}, got {value}"
            )
        return value

    def aspect_ratio(self, node: yaml.Node, field_name: str) -> str:
        value = self.value(node, field_name)
        if not isinstance(value, str) or not ASPECT_RATIO_PATTERN.match(value.strip()):
            shown = value if isinstance(value, str) else _type_name(value)
            raise self.fail(
                node, field_name, f'must be a ratio such as "16:9" (quoted), got {shown!r}'
            )
        return value.strip()

    def size(self, node: yaml.Node, field_name: str) -> Size:
        """One item of ``sizes``: ``[width, height]`` or a ratio string."""
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return Size(ratio=self.aspect_ratio(node, field_name), line=line, field=field_name)
        pair = self.sequence(node, field_name)
        if len(pair) != 2:
            raise self.fail(
                node, field_name, f"must be [width, height] or a ratio, got {len(pair)} values"
            )
        width = self.dimension(pair[0], f"{field_name}[0]")
        height = self.dimension(pair[1], f"{field_name}[1]")
        return Size(width, height, line=line, field=field_name)

    def sequence(self, node: yaml.Node, field_name: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, field_name, f"must be a list, got {_kind(node)}")
        return list(node.value)

    def params(
        self, node: yaml.Node, field_name: str, places: dict[str, tuple[int, str]]
    ) -> dict[str, Any]:
        items = self.mapping(node, field_name, ())
        result: dict[str, Any] = {}
        for key, value_node in items.items():
            name = f"{field_name}.{key}"
            places[key] = (value_node.start_mark.line + 1, name)
            if key in RESERVED_PARAMS:
                own = RESERVED_FIELDS.get(key, key)
                raise self.fail(
                    value_node, name, f"set {key} with its own field ({own}:), not in params"
                )
            result[key] = self.json_value(value_node, name)
            if key == "seed":
                seed = result[key]
                if seed != PER_UNIT_SEED and (isinstance(seed, bool) or not isinstance(seed, int)):
                    raise self.fail(
                        value_node,
                        name,
                        f"must be a whole number or {PER_UNIT_SEED!r}, got {seed!r}",
                    )
        return result


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest's structure.  Prompts files are only checked to exist;
    their lines are checked by :func:`count_units` (or as :func:`iter_units` reaches them)."""
    path = Path(path)
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(display, None, "manifest", "file not found") from None
    except IsADirectoryError:
        raise ManifestError(display, None, "manifest", "is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(display, None, "manifest", f"not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ManifestError(display, None, "manifest", exc.strerror or str(exc)) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            problem += f" ({exc.context} begun on line {exc.context_mark.line + 1})"
        raise ManifestError(display, line, "yaml", problem) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(display, None, "yaml", str(exc).splitlines()[0]) from exc
    if root is None:
        raise ManifestError(display, None, "jobs", "the manifest is empty")
    reader = _Reader(path, text)
    top = reader.mapping(root, "", TOP_LEVEL_KEYS)

    defaults: dict[str, Any] = {}
    if "model" in top:
        defaults["model"] = reader.string(top["model"], "model")
        defaults["model_line"] = top["model"].start_mark.line + 1
    for name in ("width", "height"):
        if name in top:
            defaults[name] = (reader.dimension(top[name], name), top[name].start_mark.line + 1)
    if "aspect_ratio" in top:
        if "width" in top or "height" in top:
            raise reader.fail(top["aspect_ratio"], "aspect_ratio", "give either it or width/height")
        ratio_node = top["aspect_ratio"]
        defaults["aspect_ratio"] = Size(
            ratio=reader.aspect_ratio(ratio_node, "aspect_ratio"),
            line=ratio_node.start_mark.line + 1,
            field="aspect_ratio",
        )
    places: dict[str, tuple[int, str]] = {}
    defaults["params"] = reader.params(top["params"], "params", places) if "params" in top else {}
    defaults["param_places"] = places
    output = None
    if "output" in top:
        output = path.parent / reader.string(top["output"], "output")
    filename = DEFAULT_FILENAME
    if "filename" in top:
        template = reader.string(top["filename"], "filename")
        try:
            filename = parse_template(template)
        except ConfigError as exc:
            raise reader.fail(top["filename"], "filename", str(exc)) from exc
    concurrency = None
    if "concurrency" in top:
        concurrency = reader.integer(
            top["concurrency"], "concurrency", minimum=1, maximum=MAX_CONCURRENCY
        )
    if "jobs" not in top:
        raise reader.fail(root, "jobs", "missing: the manifest must have a jobs: list")
    job_nodes = reader.sequence(top["jobs"], "jobs")
    if not job_nodes:
        raise reader.fail(top["jobs"], "jobs", "must list at least one job")

    entries: list[Entry] = []
    explicit_ids: dict[str, int] = {}
    for index, node in enumerate(job_nodes):
        entry = _parse_entry(reader, index, node, defaults)
        if entry.explicit_id:
            if entry.label in explicit_ids:
                raise reader.fail(
                    node,
                    f"jobs[{index}].id",
                    f"duplicate id {entry.label!r} (first on line {explicit_ids[entry.label]})",
                )
            explicit_ids[entry.label] = entry.line
        entries.append(entry)
    return Manifest(
        path=path,
        entries=tuple(entries),
        output=output,
        concurrency=concurrency,
        filename=filename,
    )


def _parse_entry(reader: _Reader, index: int, node: yaml.Node, defaults: dict[str, Any]) -> Entry:
    name = f"jobs[{index}]"
    items = reader.mapping(node, name, ENTRY_KEYS)
    line = node.start_mark.line + 1

    label, explicit = name, False
    if "id" in items:
        raw = reader.value(items["id"], f"{name}.id")
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise reader.fail(items["id"], f"{name}.id", f"must be a string, got {_type_name(raw)}")
        label, explicit = str(raw), True
        if not ENTRY_ID_PATTERN.match(label):
            raise reader.fail(
                items["id"],
                f"{name}.id",
                "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )

    if ("prompt" in items) == ("prompts_file" in items):
        raise reader.fail(node, name, "give exactly one of prompt or prompts_file")

    if "model" in items:
        model = reader.string(items["model"], f"{name}.model")
        model_line, model_field = items["model"].start_mark.line + 1, f"{name}.model"
    elif "model" in defaults:
        model, model_line, model_field = defaults["model"], defaults["model_line"], "model"
    else:
        raise reader.fail(node, f"{name}.model", "no model: set model at the top or in this entry")

    sizes = _entry_sizes(reader, name, node, items, defaults)

    params = dict(defaults["params"])
    param_places = dict(defaults["param_places"])
    if "params" in items:
        params.update(reader.params(items["params"], f"{name}.params", param_places))

    count = 1
    if "count" in items:
        count = reader.integer(items["count"], f"{name}.count", minimum=1, maximum=MAX_COUNT)

    prompt: str | None = None
    prompt_line = 0
    prompts_file: Path | None = None
    if "prompt" in items:
        prompt = reader.string(items["prompt"], f"{name}.prompt")
        prompt_line = items["prompt"].start_mark.line + 1
    else:
        file_node = items["prompts_file"]
        relative = reader.string(file_node, f"{name}.prompts_file")
        prompts_file = reader.path.parent / relative
        if prompts_file.suffix.lower() not in PROMPT_FILE_SUFFIXES:
            raise reader.fail(
                file_node,
                f"{name}.prompts_file",
                f"must end in {', '.join(PROMPT_FILE_SUFFIXES)}, got {relative!r}",
            )
        if not prompts_file.is_file():
            raise reader.fail(file_node, f"{name}.prompts_file", f"file not found: {relative}")

    variables: list[tuple[str, tuple[Any, ...]]] = []
    if "vars" in items:
        vars_node = items["vars"]
        if prompt is None:
            raise reader.fail(vars_node, f"{name}.vars", "vars go with prompt, not prompts_file")
        for var, values_node in reader.mapping(vars_node, f"{name}.vars", ()).items():
            var_name = f"{name}.vars.{var}"
            if not VAR_NAME_PATTERN.match(var):
                raise reader.fail(values_node, var_name, "variable names are letters, digits and _")
            values = reader.value(values_node, var_name)
            if not isinstance(values, list) or not values:
                raise reader.fail(values_node, var_name, "must be a non-empty list of values")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise reader.fail(
                        values_node, var_name, f"values must be strings or numbers, got {value!r}"
                    )
            variables.append((var, tuple(values)))
        _check_template(
            reader, items["prompt"], f"{name}.prompt", prompt, {v for v, _ in variables}
        )
        used = _template_fields(prompt)
        for var, _ in variables:
            if var not in used:
                raise reader.fail(vars_node, f"{name}.vars.{var}", "is not used in the prompt")

    return Entry(
        index=index,
        line=line,
        label=label,
        explicit_id=explicit,
        model=model,
        sizes=tuple(sizes),
        params=params,
        count=count,
        prompt=prompt,
        prompt_line=prompt_line,
        prompts_file=prompts_file,
        variables=tuple(variables),
        param_places=param_places,
        model_line=model_line,
        model_field=model_field,
    )


def _entry_sizes(
    reader: _Reader,
    name: str,
    node: yaml.Node,
    items: dict[str, yaml.Node],
    defaults: dict[str, Any],
) -> tuple[Size, ...]:
    """The entry's sizes: its ``sizes``, else its own ``aspect_ratio`` or width/height
    (each side from the entry or the top), else the top's, else the model's default."""
    if "sizes" in items:
        for key in ("width", "height", "aspect_ratio"):
            if key in items:
                raise reader.fail(items[key], f"{name}.{key}", f"give either sizes or {key}")
        size_nodes = reader.sequence(items["sizes"], f"{name}.sizes")
        if not size_nodes:
            raise reader.fail(
                items["sizes"], f"{name}.sizes", "must list at least one [width, height] or ratio"
            )
        sizes = [reader.size(n, f"{name}.sizes[{i}]") for i, n in enumerate(size_nodes)]
        if len({size.key for size in sizes}) != len(sizes):
            raise reader.fail(items["sizes"], f"{name}.sizes", "lists the same size twice")
        return tuple(sizes)
    if "aspect_ratio" in items:
        for key in ("width", "height"):
            if key in items:
                raise reader.fail(items[key], f"{name}.{key}", "give either it or aspect_ratio")
        ratio_node = items["aspect_ratio"]
        ratio = reader.aspect_ratio(ratio_node, f"{name}.aspect_ratio")
        return (
            Size(ratio=ratio, line=ratio_node.start_mark.line + 1, field=f"{name}.aspect_ratio"),
        )
    if "width" in items or "height" in items or "width" in defaults or "height" in defaults:
        dims: dict[str, int] = {}
        line, where = 0, ""
        for key in ("width", "height"):
            if key in items:
                dims[key] = reader.dimension(items[key], f"{name}.{key}")
                line, where = items[key].start_mark.line + 1, f"{name}.{key}"
            elif key in defaults:
                dims[key], top_line = defaults[key]
                line, where = line or top_line, where or key
            else:
                raise reader.fail(
                    node, f"{name}.{key}", f"no {key}: set it at the top or in this entry"
                )
        return (Size(dims["width"], dims["height"], line=line, field=where),)
    if "aspect_ratio" in defaults:
        return (defaults["aspect_ratio"],)
    return (NO_SIZE,)


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(
    reader: _Reader, node: yaml.Node, field_name: str, template: str, names: set[str]
) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise reader.fail(
            node, field_name, f"bad template: {exc} (write {{{{ for a literal brace)"
        ) from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not VAR_NAME_PATTERN.match(name) or spec or conversion:
            raise reader.fail(node, field_name, f"bad placeholder {{{name}}}: use {{name}} only")
        if name not in names:
            raise reader.fail(node, field_name, f"placeholder {{{name}}} has no entry in vars")


# -------------------------------------------------------------------------- expansion


def iter_units(manifest: Manifest) -> Iterator[Unit]:
    """Yield every unit of the manifest in order, reading prompts files as it goes."""
    occurrences: dict[bytes, int] = {}
    index = 0
    for entry in manifest.entries:
        # Everything in the canonical request but the prompt is fixed per entry and size:
        # encode it once, not once per prompt (this loop runs millions of times).
        model_json = json.dumps(entry.model, ensure_ascii=False)
        params_json = _canonical_json(entry.params)
        tails = [(size, f",{size.canonical()},{params_json}]") for size in entry.sizes]
        # "per-unit" stays in the digest, so the id says how the seed was chosen, and
        # the seed sent is drawn from that id: the same unit asks the same seed again.
        derive_seed = entry.params.get("seed") == PER_UNIT_SEED
        for prompt, metadata, source in iter_entry_prompts(manifest, entry):
            head = f"[{model_json},{json.dumps(prompt, ensure_ascii=False)}"
            for size, tail in tails:
                request = head + tail
                key = hashlib.sha256(request.encode()).digest()[:12]
                first_repeat = occurrences.get(key, 0)
                occurrences[key] = first_repeat + entry.count
                for repeat in range(first_repeat, first_repeat + entry.count):
                    identity = unit_id(request, repeat)
                    params = entry.params
                    if derive_seed:
                        params = {**entry.params, "seed": seed_for(identity)}
                    yield Unit(
                        id=identity,
                        entry=entry.label,
                        model=entry.model,
                        prompt=prompt,
                        width=size.width,
                        height=size.height,
                        params=params,
                        repeat=repeat,
                        source=source,
                        metadata=metadata,
                        index=index,
                        aspect_ratio=size.ratio,
                    )
                    index += 1


def seed_for(identity: str) -> int:
    """A seed drawn from a unit id: stable, and spread over 0 .. 2**31 - 1."""
    return int(identity[:8], 16) & SEED_MASK


def count_units(manifest: Manifest) -> int:
    """Check every prompt of every prompts file and count the units; raises on the first bad one.

    Reads every prompt as :func:`iter_units` does, but builds no units: a run counts
    (and so checks) the whole manifest before its first submission."""
    total = 0
    for entry in manifest.entries:
        prompts = sum(1 for _ in iter_entry_prompts(manifest, entry))
        total += prompts * len(entry.sizes) * entry.count
    return total


def unit_id(canonical_request: str, repeat: int) -> str:
    digest = hashlib.sha256(f"{canonical_request}#{repeat}".encode()).hexdigest()
    return digest[:UNIT_ID_HEX_DIGITS]


def canonical_request(model: str, prompt: str, size: Size, params: Mapping[str, Any]) -> str:
    """The definition of what a unit id digests: ``[model, prompt, width, height,
    params]``, where an aspect ratio stands in the width's place with a null height, and
    no size is two nulls.  :func:`iter_units` builds the same string piecewise, and a
    test holds the two equal."""
    first = size.ratio if size.ratio is not None else size.width
    return _canonical_json([model, prompt, first, size.height, params])


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def iter_entry_prompts(
    manifest: Manifest, entry: Entry
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """The entry's prompts as (prompt, columns or vars, ``file:line``), each checked to
    have the columns the file name template uses."""
    prompts = _iter_prompts(manifest, entry)
    if not manifest.filename.extras:
        yield from prompts
        return
    for prompt, metadata, source in prompts:
        missing = manifest.filename.missing(metadata)
        if missing is not None:
            path, _, line = source.rpartition(":")
            what = "vars" if entry.prompt is not None else "columns"
            raise ManifestError(
                path,
                int(line),
                missing,
                f"the filename template uses {{{missing}}}, which is not among this "
                f"prompt's {what}",
            )
        yield prompt, metadata, source


def _iter_prompts(manifest: Manifest, entry: Entry) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    if entry.prompt is not None:
        source = f"{manifest.path}:{entry.prompt_line}"
        if not entry.variables:
            yield entry.prompt, {}, source
            return
        names = [name for name, _ in entry.variables]
        for combo in itertools.product(*(values for _, values in entry.variables)):
            bound = dict(zip(names, combo, strict=True))
            yield entry.prompt.format(**bound), bound, source
        return
    assert entry.prompts_file is not None
    suffix = entry.prompts_file.suffix.lower()
    if suffix == ".txt":
        yield from _read_txt(entry.prompts_file)
    elif suffix == ".csv":
        yield from _read_csv(entry.prompts_file)
    else:
        yield from _read_jsonl(entry.prompts_file)


def _open_text(path: Path) -> Any:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ManifestError(str(path), None, "prompts_file", exc.strerror or str(exc)) from exc


def _decode_guard(path: Path, lines: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from lines
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), None, "prompt", f"not UTF-8 text ({exc.reason})") from exc


def _read_txt(path: Path) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    empty: Mapping[str, Any] = {}
    with _open_text(path) as handle:
        for number, raw in enumerate(_decode_guard(path, iter(handle)), start=1):
            prompt = raw.strip()
            if prompt:  # blank lines separate groups of prompts; they are not prompts
                yield prompt, empty, f"{path}:{number}"


def _read_csv(path: Path) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    display = str(path)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ManifestError(display, 1, "header", str(exc)) from exc
        if not header or "prompt" not in header:
            raise ManifestError(display, 1, "prompt", "the header has no prompt column")
        rows = _decode_guard(path, iter(reader))
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ManifestError(display, reader.line_num, "row", str(exc)) from exc
            line = reader.line_num
            if None in row:
                raise ManifestError(
                    display, line, "row", f"more values than the {len(header)} columns"
                )
            if any(value is None for value in row.values()):
                raise ManifestError(
                    display, line, "row", f"fewer values than the {len(header)} columns"
                )
            prompt = row.pop("prompt").strip()
            if not prompt:
                raise ManifestError(display, line, "prompt", "must not be empty")
            yield prompt, row, f"{display}:{line}"


def _read_jsonl(path: Path) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    display = str(path)
    with _open_text(path) as handle:
        for number, raw in enumerate(_decode_guard(path, iter(handle)), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ManifestError(display, number, "json", exc.msg) from exc
            if not isinstance(record, dict):
                raise ManifestError(display, number, "json", "each line must be a JSON object")
            prompt = record.pop("prompt", None)
            if not isinstance(prompt, str):
                problem = (
                    "missing" if prompt is None else f"must be a string, got {_type_name(prompt)}"
                )
                raise ManifestError(display, number, "prompt", problem)
            if not prompt.strip():
                raise ManifestError(display, number, "prompt", "must not be empty")
            yield prompt.strip(), record, f"{display}:{number}"


# ---------------------------------------------------------------------------- helpers


def _json_problem(value: Any) -> str | None:
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, list):
        return next((p for p in map(_json_problem, value) if p), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"keys must be strings, got {key!r}"
            problem = _json_problem(item)
            if problem:
                return problem
        return None
    return f"{_type_name(value)} is not a JSON value (quote it to send a string)"


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    return names.get(type(value), type(value).__name__)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return "nothing"
    return "a single value"
