"""Image file names from a template, such as ``{entry}/{index:06d}-{slug}``.

Pure code.  A template is checked once, when it is read, and can then only name
files below the images directory:

- its literal text is split on ``/`` into path parts, none of which may be empty,
  ``.``/``..``, start with a dot (hidden, and the downloader's part files are hidden)
  or hold characters that some file systems refuse (``\\ : * ? " < > |``, control);
- every field's value is made into a safe name part (letters, digits, ``.``, ``_``
  and ``-``, never starting or ending with ``.`` or ``-``, never ``/``), so no value can add a part;
- it must hold ``{id}`` or ``{index}``, so that two units never get one name;
- no name part can grow longer than :data:`NAME_PART_MAX` bytes, whatever the values.

A job's images are numbered by ``{n}`` (0, 1, ...).  A template without it names a
job's first image as it is and adds ``-1``, ``-2``, ... for the others.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from ..errors import ConfigError


class Named(Protocol):
    """What a template reads of a unit (a :class:`~batchgen.manifest.Unit` is one); the
    module needs no more of the manifest than this, and imports none of it."""

    @property
    def id(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def repeat(self) -> int: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def aspect_ratio(self) -> str | None: ...
    @property
    def prompt(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def entry(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def metadata(self) -> Mapping[str, Any]: ...


DEFAULT_TEMPLATE = "{id}_{n}"
# Fields every unit has, and the longest value each can give (after making it safe).
# The prompt file's columns and an entry's vars are fields too, as long as EXTRA_MAX.
UNIT_FIELDS: Mapping[str, int] = {
    "id": 20,
    "index": 12,
    "n": 4,
    "repeat": 6,
    "width": 6,
    "height": 6,
    "aspect_ratio": 9,
    "slug": 60,
    "model": 64,
    "entry": 100,
}
NUMBER_FIELDS = frozenset({"index", "n", "repeat", "width", "height"})
UNIQUE_FIELDS = ("id", "index")
EXTRA_MAX = 64
SLUG_MAX = UNIT_FIELDS["slug"]
# Leaves room under the usual 255-byte limit for the suffix and the part-file decoration.
NAME_PART_MAX = 200
EMPTY_VALUE = "_"
EMPTY_SLUG = "untitled"
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
UNSAFE_LITERAL = re.compile(r'[\\:*?"<>|\x00-\x1f\x7f]')
UNSAFE_VALUE = re.compile(r"[^A-Za-z0-9._-]+")
NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class FileNameTemplate:
    text: str
    # The prompt file's columns or vars it uses: each unit must have them.
    extras: tuple[str, ...]
    numbered: bool  # holds {n}
    uses: frozenset[str]  # every field it holds

    def render(
        self, unit: Named, n: int, suffix: str, size: tuple[int, int] | None = None
    ) -> PurePosixPath:
        """The image's path relative to the images directory.  ``size`` is the image's
        own width and height when known; else the size asked for (0 for none)."""
        width, height = size or (unit.width or 0, unit.height or 0)
        values: dict[str, Any] = {
            "id": unit.id,
            "index": unit.index,
            "n": n,
            "repeat": unit.repeat,
            "width": width,
            "height": height,
        }
        if "aspect_ratio" in self.uses:
            ratio = unit.aspect_ratio.replace(":", "x") if unit.aspect_ratio else ""
            values["aspect_ratio"] = ratio or EMPTY_VALUE
        # Only worked out when used: this runs for every image.
        if "slug" in self.uses:
            values["slug"] = slug(unit.prompt)
        if "model" in self.uses:
            values["model"] = safe_value(unit.model, UNIT_FIELDS["model"])
        if "entry" in self.uses:
            values["entry"] = safe_value(unit.entry, UNIT_FIELDS["entry"])
        for name in self.extras:
            if name not in unit.metadata:
                raise ConfigError(f"{unit.source}: the file name template needs {name!r}")
            values[name] = safe_value(_as_text(unit.metadata[name]), EXTRA_MAX)
        name = self.text.format(**values)
        if not self.numbered and n:
            name += f"-{n}"
        path = PurePosixPath(name + suffix)
        # The checks made when the template was read guarantee this; it costs nothing.
        assert not path.is_absolute() and ".." not in path.parts, path
        return path

    def missing(self, metadata: Mapping[str, Any]) -> str | None:
        """The first field this template needs that a prompt's columns lack."""
        return next((name for name in self.extras if name not in metadata), None)


def parse_template(text: str) -> FileNameTemplate:
    """Check a template; :class:`ConfigError` says what is wrong with it."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"bad template: {exc} (write {{{{ for a literal brace)") from exc
    fields: list[str] = []
    # The template with each field replaced by its longest value: for the checks on parts.
    widest: list[str] = []
    for literal, name, spec, conversion in parsed:
        widest.append(literal)
        if name is None:
            continue
        if not FIELD_NAME.match(name) or conversion:
            raise ConfigError(f"bad field {{{name}}}: write {{name}} or {{name:spec}}")
        if spec and name not in NUMBER_FIELDS:
            raise ConfigError(
                f"{{{name}:{spec}}}: only number fields ({', '.join(sorted(NUMBER_FIELDS))}) "
                "take a format"
            )
        width = UNIT_FIELDS.get(name, EXTRA_MAX)
        if spec:
            # A width is checked before it is used: '{index:0999999999d}' would build
            # a string of a billion characters just to find it too long.
            too_wide = [int(digits) for digits in re.findall(r"\d+", spec)]
            if any(number > NAME_PART_MAX for number in too_wide):
                raise ConfigError(
                    f"{{{name}:{spec}}}: a width over {NAME_PART_MAX} (a name part's limit)"
                )
            try:
                shown = format(0, spec)
            except ValueError as exc:
                raise ConfigError(f"{{{name}:{spec}}}: {exc}") from exc
            if UNSAFE_VALUE.search(shown) or shown.startswith("."):
                raise ConfigError(f"{{{name}:{spec}}}: gives {shown!r}, not a safe file name")
            width = max(width, len(shown))
        fields.append(name)
        widest.append("x" * width)
    if not any(name in fields for name in UNIQUE_FIELDS):
        raise ConfigError("must hold {id} or {index}, so that every image gets a name of its own")
    bad = UNSAFE_LITERAL.search("".join(literal for literal, *_ in parsed))
    if bad:
        raise ConfigError(f"must not hold {bad.group()!r}: some file systems refuse it")
    if text.startswith("/"):
        raise ConfigError("must be relative: it names files below OUT/images")
    for literal_part, wide_part in zip(_parts(parsed), "".join(widest).split("/"), strict=True):
        if literal_part in ("", ".", ".."):
            shown = repr(literal_part) if literal_part else "an empty"
            raise ConfigError(f"has {shown} path part; it must name files below OUT/images")
        if literal_part.startswith("."):
            raise ConfigError(f"path part {literal_part!r} starts with a dot (a hidden file)")
        if len(wide_part.encode()) > NAME_PART_MAX:
            raise ConfigError(
                f"path part {literal_part!r} can be longer than {NAME_PART_MAX} bytes; "
                "use fewer fields in it"
            )
    extras = tuple(dict.fromkeys(name for name in fields if name not in UNIT_FIELDS))
    return FileNameTemplate(
        text=text, extras=extras, numbered="n" in fields, uses=frozenset(fields)
    )


def _parts(parsed: list[tuple[str, str | None, str | None, str | None]]) -> list[str]:
    """The template's path parts as written, fields included (for messages and checks)."""
    shown = "".join(
        literal + ("" if name is None else "{" + name + (f":{spec}" if spec else "") + "}")
        for literal, name, spec, _ in parsed
    )
    return shown.split("/")


DEFAULT_FILENAME = parse_template(DEFAULT_TEMPLATE)


def slug(prompt: str) -> str:
    """A prompt as a short lowercase ASCII name: "A cat, on a mat!" gives "a-cat-on-a-mat"."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    if len(words) > SLUG_MAX:
        cut = words[:SLUG_MAX]
        # End on a whole word when one ends in the second half of what is kept.
        boundary = cut.rfind("-")
        words = cut[:boundary] if boundary > SLUG_MAX // 2 else cut.rstrip("-")
    return words or EMPTY_SLUG


def safe_value(value: str, limit: int) -> str:
    """A value as one safe name part: other characters become "-", and it neither
    starts nor ends with "." or "-" (hidden files, options to shell tools)."""
    cleaned = UNSAFE_VALUE.sub("-", value).strip(".-")[:limit].rstrip(".-")
    return cleaned or EMPTY_VALUE


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True)
