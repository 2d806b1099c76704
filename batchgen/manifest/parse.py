"""Parse a YAML manifest into entries.

Pure code: no network, and the only file read is the manifest (a prompts file is only
checked to exist here; its lines are read as units are made, :mod:`.prompts`).  Every
error is a :class:`ManifestError` naming the file, the line and the field, raised before
anything is sent or written.
"""

from __future__ import annotations

import difflib
import glob
import math
import re
import string
from pathlib import Path
from typing import Any

import yaml

from ..config import MAX_CONCURRENCY, is_api_id
from ..errors import ConfigError, ManifestError
from .expand import PER_UNIT_SEED, RANDOM_SEED
from .naming import DEFAULT_FILENAME, parse_template
from .prompts import PROMPT_FILE_SUFFIXES, type_name
from .types import NO_SIZE, Entry, ImageInput, Manifest, QualityRule, Size

TOP_LEVEL_KEYS = (
    "model",
    "width",
    "height",
    "aspect_ratio",
    "params",
    "output",
    "filename",
    "concurrency",
    "prompt_column",
    "columns",
    "quality",
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
    "prompt_column",
    "columns",
    "images",
    "image_input",
    "inputs",
    "quality",
)
QUALITY_KEYS = ("sensitivity", "on_fail", "on_warn", "attempts", "min_score")
SENSITIVITIES = ("low", "medium", "high")
QUALITY_ACTIONS = ("keep", "regenerate")
MAX_QUALITY_ATTEMPTS = 10
# Set by their own fields; a second way to set them would make the digest ambiguous.
RESERVED_PARAMS = ("prompt", "width", "height", "aspectRatio")
RESERVED_FIELDS = {"aspectRatio": "aspect_ratio"}
ASPECT_RATIO_PATTERN = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")
SIZE_MULTIPLE = 16
MAX_COUNT = 100_000
ENTRY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VAR_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Bounds on what a manifest can make batchgen build: lists and mappings within each
# other, values in all (aliases followed), a whole number's size (what JSON carries
# across languages without loss or refusal).
MAX_NESTING = 32
MAX_VALUES = 1_000_000
MAX_WHOLE_NUMBER = 2**63 - 1


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
        except ValueError as exc:  # a number of more digits than Python converts
            raise self.fail(node, field_name, "a number too long to use") from exc

    def json_value(self, node: yaml.Node, field_name: str) -> Any:
        value = self.value(node, field_name)
        problem = _json_problem(value)
        if problem:
            raise self.fail(node, field_name, problem)
        return value

    def model_id(self, node: yaml.Node, field_name: str) -> str:
        """A model's id, as the API's ids look (it goes into the request's path)."""
        value = self.string(node, field_name)
        if not is_api_id(value):
            raise self.fail(
                node, field_name, f"{value[:60]!r} is not a model id (letters, digits, _ . - ~)"
            )
        return value

    def string(self, node: yaml.Node, field_name: str, *, allow_empty: bool = False) -> str:
        value = self.value(node, field_name)
        if not isinstance(value, str):
            raise self.fail(node, field_name, f"must be a string, got {type_name(value)}")
        if not allow_empty and not value.strip():
            raise self.fail(node, field_name, "must not be empty")
        return value

    def integer(self, node: yaml.Node, field_name: str, *, minimum: int, maximum: int) -> int:
        value = self.value(node, field_name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, field_name, f"must be a whole number, got {type_name(value)}")
        if not minimum <= value <= maximum:
            raise self.fail(
                node, field_name, f"must be between {minimum} and {maximum}, got {value}"
            )
        return value

    def dimension(self, node: yaml.Node, field_name: str) -> int:
        value = self.value(node, field_name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, field_name, f"must be a whole number, got {type_name(value)}")
        if value <= 0 or value % SIZE_MULTIPLE:
            raise self.fail(
                node, field_name, f"must be a positive multiple of {SIZE_MULTIPLE}, got {value}"
            )
        return value

    def aspect_ratio(self, node: yaml.Node, field_name: str) -> str:
        value = self.value(node, field_name)
        if not isinstance(value, str) or not ASPECT_RATIO_PATTERN.match(value.strip()):
            shown = value if isinstance(value, str) else type_name(value)
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
                named = (PER_UNIT_SEED, RANDOM_SEED)
                if seed not in named and (isinstance(seed, bool) or not isinstance(seed, int)):
                    raise self.fail(
                        value_node,
                        name,
                        f"must be a whole number, {PER_UNIT_SEED!r} or {RANDOM_SEED!r}, "
                        f"got {seed!r}",
                    )
        return result


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest's structure.  Prompts files are only checked to exist;
    their lines are checked by :func:`count_units` (or as :func:`iter_units` reaches them)."""
    path = Path(path)
    text, root = _read_yaml(path)
    reader = _Reader(path, text)
    top = reader.mapping(root, "", TOP_LEVEL_KEYS)
    defaults = _top_defaults(reader, top)
    output, output_refused = _output_of(reader, top, path)
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
    return Manifest(
        path=path,
        entries=_entries(reader, job_nodes, defaults),
        output=output,
        output_refused=output_refused,
        concurrency=concurrency,
        filename=filename,
    )


def _read_yaml(path: Path) -> tuple[str, yaml.Node]:
    """The manifest's text and its YAML tree (nodes keep their lines), checked to be
    a shape that can be read (no aliases, not too deep)."""
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
    except RecursionError:
        raise ManifestError(
            display, None, "yaml", f"nested too deeply (at most {MAX_NESTING} levels)"
        ) from None
    if root is None:
        raise ManifestError(display, None, "jobs", "the manifest is empty")
    _check_shape(root, display)
    return text, root


def _top_defaults(reader: _Reader, top: dict[str, yaml.Node]) -> dict[str, Any]:
    """What the top of the manifest gives every entry: model, size, params, quality,
    a prompts file's columns."""
    defaults: dict[str, Any] = {}
    if "model" in top:
        defaults["model"] = reader.model_id(top["model"], "model")
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
    defaults["quality"] = _quality(reader, top["quality"], "quality") if "quality" in top else None
    defaults["param_places"] = places
    for key in ("prompt_column", "columns"):
        if key in top:
            defaults[key] = (top[key], key)
    return defaults


def _output_of(
    reader: _Reader, top: dict[str, yaml.Node], path: Path
) -> tuple[Path | str | None, str | None]:
    """``output:`` (a bucket URL as written, a directory relative to the manifest), and
    why it is refused, if it is (outside the manifest's folder: only --out may say so)."""
    output: Path | str | None = None
    output_refused = None
    if "output" in top:
        written = reader.string(top["output"], "output")
        # A bucket URL is kept as written; a directory is relative to the manifest.
        output = written if re.match(r"[a-z0-9]+://", written) else path.parent / written
        if isinstance(output, Path) and (
            Path(written).is_absolute() or ".." in Path(written).parts
        ):
            output_refused = str(
                ManifestError(
                    reader.display,
                    top["output"].start_mark.line + 1,
                    "output",
                    f"{written!r} is outside the manifest's folder: a manifest writes only "
                    "below its own folder; give such a directory with --out",
                )
            )
    return output, output_refused


def _entries(
    reader: _Reader, job_nodes: list[yaml.Node], defaults: dict[str, Any]
) -> tuple[Entry, ...]:
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
    return tuple(entries)


def _parse_entry(reader: _Reader, index: int, node: yaml.Node, defaults: dict[str, Any]) -> Entry:
    name = f"jobs[{index}]"
    items = reader.mapping(node, name, ENTRY_KEYS)
    line = node.start_mark.line + 1
    label, explicit = _entry_label(reader, name, items)
    if ("prompt" in items) == ("prompts_file" in items):
        raise reader.fail(node, name, "give exactly one of prompt or prompts_file")

    if "model" in items:
        model = reader.model_id(items["model"], f"{name}.model")
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

    prompt, prompt_line, prompts_file = _entry_prompt(reader, name, items)
    prompt_column, columns = _column_choices(reader, name, items, defaults, prompts_file)
    images: tuple[Path | str, ...] = ()
    if "images" in items:
        images = _image_files(reader, items["images"], f"{name}.images")
    image_input = "image"
    if "image_input" in items:
        image_input = reader.string(items["image_input"], f"{name}.image_input")
    inputs = _image_inputs(reader, name, items, prompts_file is not None)
    if images and any(given.name == image_input for given in inputs):
        raise reader.fail(
            items["images"], f"{name}.images", f"{image_input!r} is given in inputs too"
        )

    variables = _entry_variables(reader, name, items, prompt)
    quality = defaults["quality"]
    if "quality" in items:
        quality = _quality(reader, items["quality"], f"{name}.quality")
    return Entry(
        quality=quality,
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
        variables=variables,
        param_places=param_places,
        model_line=model_line,
        model_field=model_field,
        prompt_column=prompt_column,
        columns=columns,
        images=images,
        image_input=image_input,
        images_line=items["images"].start_mark.line + 1 if "images" in items else 0,
        inputs=inputs,
    )


def _entry_label(reader: _Reader, name: str, items: dict[str, yaml.Node]) -> tuple[str, bool]:
    """The entry's label (its ``id``, else ``jobs[i]``) and whether it was given."""
    if "id" not in items:
        return name, False
    raw = reader.value(items["id"], f"{name}.id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise reader.fail(items["id"], f"{name}.id", f"must be a string, got {type_name(raw)}")
    if not ENTRY_ID_PATTERN.match(str(raw)):
        raise reader.fail(
            items["id"],
            f"{name}.id",
            "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return str(raw), True


def _entry_prompt(
    reader: _Reader, name: str, items: dict[str, yaml.Node]
) -> tuple[str | None, int, Path | None]:
    """(prompt, its line, None) or (None, 0, its prompts file, checked to exist)."""
    if "prompt" in items:
        prompt = reader.string(items["prompt"], f"{name}.prompt")
        return prompt, items["prompt"].start_mark.line + 1, None
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
    return None, 0, prompts_file


def _entry_variables(
    reader: _Reader, name: str, items: dict[str, yaml.Node], prompt: str | None
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``vars:``, each used in the prompt; the prompt's placeholders each a var (braces
    sent as they are would reach a paid API)."""
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
    elif prompt is not None:
        # "a {animal}" with no vars would send the braces to a paid API as they are.
        _check_template(reader, items["prompt"], f"{name}.prompt", prompt, set())
    return tuple(variables)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# An image given by its address: fetched once, before anything is sent.
URL_SCHEMES = ("https://", "http://")


def _image_files(reader: _Reader, node: yaml.Node, where: str) -> tuple[Path | str, ...]:
    """``images:``: a file, a directory (its images), or a glob (``sketches/*.png``,
    ``**`` for every level), or a list of them, relative to the manifest; in order."""
    given = reader.value(node, where)
    patterns = given if isinstance(given, list) else [given]
    if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise reader.fail(node, where, "must be a path, a directory, a glob, or a list of them")
    found: list[Path | str] = []
    for pattern in patterns:
        if pattern.startswith(URL_SCHEMES):
            found.append(pattern)  # fetched before anything is sent (see remote_images)
            continue
        base = reader.path.parent / pattern
        if base.is_dir():
            matches = sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(base), recursive=True))
        else:
            matches = [base]
        files = [p for p in matches if p.is_file()]
        if not files:
            raise reader.fail(node, where, f"{pattern!r} names no image file")
        found.extend(files)
    if len(set(found)) != len(found):
        raise reader.fail(node, where, "names a file twice")
    return tuple(found)


def _image_inputs(
    reader: _Reader, name: str, items: dict[str, yaml.Node], from_file: bool
) -> tuple[ImageInput, ...]:
    """``inputs:``: model input -> a file, a list of files (an input that takes
    several), or ``{column: NAME}``, a prompts file's column naming each prompt's file."""
    if "inputs" not in items:
        return ()
    found = []
    for input_name, node in reader.mapping(items["inputs"], f"{name}.inputs", ()).items():
        where = f"{name}.inputs.{input_name}"
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            choice = reader.mapping(node, where, ("column",))
            if "column" not in choice:
                raise reader.fail(node, where, "give {column: NAME}")
            if not from_file:
                raise reader.fail(node, where, "a column goes with prompts_file")
            column = reader.string(choice["column"], f"{where}.column")
            found.append(ImageInput(input_name, column=column, line=line, field=where))
            continue
        given = reader.value(node, where)
        many = isinstance(given, list)
        paths = given if many else [given]
        if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
            raise reader.fail(node, where, "must be a file, a list of files, or {column: NAME}")
        files: list[Path | str] = []
        for path in paths:
            if path.startswith(URL_SCHEMES):
                files.append(path)  # fetched before anything is sent (see remote_images)
                continue
            file = reader.path.parent / path
            if not file.is_file():
                raise reader.fail(node, where, f"file not found: {path}")
            files.append(file)
        found.append(ImageInput(input_name, tuple(files), many, line=line, field=where))
    return tuple(found)


def _column_choices(
    reader: _Reader,
    name: str,
    items: dict[str, yaml.Node],
    defaults: dict[str, Any],
    prompts_file: Path | None,
) -> tuple[str, tuple[str, ...] | None]:
    """``prompt_column`` and ``columns`` of a prompts file's entry (its own, else the
    top's)."""
    found: dict[str, tuple[yaml.Node, str]] = {}
    for key in ("prompt_column", "columns"):
        if key in items:
            found[key] = (items[key], f"{name}.{key}")
        elif key in defaults:
            found[key] = defaults[key]
    if prompts_file is None:
        for key in ("prompt_column", "columns"):
            if key in items:
                raise reader.fail(items[key], f"{name}.{key}", "goes with prompts_file")
        return "prompt", None
    prompt_column = "prompt"
    if "prompt_column" in found:
        prompt_column = reader.string(*found["prompt_column"])
    columns: tuple[str, ...] | None = None
    if "columns" in found:
        node, where = found["columns"]
        listed = reader.value(node, where)
        if not isinstance(listed, list) or not all(isinstance(c, str) and c for c in listed):
            raise reader.fail(node, where, "must be a list of column names")
        if len(set(listed)) != len(listed):
            raise reader.fail(node, where, "names a column twice")
        if prompt_column in listed:
            raise reader.fail(node, where, f"{prompt_column!r} is the prompt, not an extra column")
        columns = tuple(listed)
    return prompt_column, columns


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


def _quality(reader: _Reader, node: yaml.Node, where: str) -> QualityRule:
    """``quality:``: sensitivity, on_fail/on_warn (keep or regenerate), attempts (the
    regenerations at most), min_score."""
    items = reader.mapping(node, where, QUALITY_KEYS)
    given: dict[str, Any] = {}
    for key, value_node in items.items():
        value = reader.value(value_node, f"{where}.{key}")
        field_name = f"{where}.{key}"
        if key == "sensitivity" and value not in SENSITIVITIES:
            raise reader.fail(value_node, field_name, f"one of {', '.join(SENSITIVITIES)}")
        if key in ("on_fail", "on_warn") and value not in QUALITY_ACTIONS:
            raise reader.fail(value_node, field_name, "keep or regenerate")
        if key == "attempts" and (
            isinstance(value, bool) or not isinstance(value, int)
            or not 0 <= value <= MAX_QUALITY_ATTEMPTS
        ):  # fmt: skip
            raise reader.fail(
                value_node, field_name, f"a whole number from 0 to {MAX_QUALITY_ATTEMPTS}"
            )
        if key == "min_score" and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100
        ):
            raise reader.fail(value_node, field_name, "a score from 0 to 100")
        given[key] = value
    return QualityRule(**given)


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
            hint = "" if names else " (did you mean to give vars:? write {{ for a literal brace)"
            raise reader.fail(
                node, field_name, f"placeholder {{{name}}} has no entry in vars{hint}"
            )


# ---------------------------------------------------------------------------- helpers


def _check_shape(root: yaml.Node, display: str) -> None:
    """Refuse a document nested too deeply, or whose aliases expand it past
    :data:`MAX_VALUES` values (a "billion laughs"), before any of it is built: nodes
    that aliases share are walked once, and a size is capped as it is summed."""
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            size[key] = 1 + sum(size[id(c)] for c in children)
            open_nodes.discard(key)
            line = node.start_mark.line + 1
            if height[key] > MAX_NESTING:
                raise ManifestError(
                    display, line, "yaml", f"nested too deeply (at most {MAX_NESTING} levels)"
                )
            if size[key] > MAX_VALUES:
                raise ManifestError(
                    display,
                    line,
                    "yaml",
                    f"expands to more than {MAX_VALUES:,} values (aliases repeat what they name)",
                )
            continue
        if key in height:
            continue
        if key in open_nodes:
            raise ManifestError(
                display, node.start_mark.line + 1, "yaml", "an alias refers to itself"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in height)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _json_problem(value: Any) -> str | None:
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if abs(value) > MAX_WHOLE_NUMBER:
            return f"whole numbers must be within ±{MAX_WHOLE_NUMBER}"
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
    return f"{type_name(value)} is not a JSON value (quote it to send a string)"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return "nothing"
    return "a single value"
