"""The prompts of an entry: its own (a template filled from ``vars``) or a prompts file's
lines (``.txt``, ``.csv``, ``.jsonl``), read lazily, each with where it came from."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from .types import Entry, Manifest

PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")


def type_name(value: Any) -> str:
    """A value's kind, as messages say it: "a string", "a number", "a mapping"."""
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    return names.get(type(value), type(value).__name__)


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
            yield entry.prompt.format(), {}, source  # "{{" is a literal brace
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
        yield from _read_csv(entry.prompts_file, entry.prompt_column, entry.columns)
    else:
        yield from _read_jsonl(entry.prompts_file, entry.prompt_column, entry.columns)


# A record's columns go into the results and the dataset's metadata as they are.
MAX_RECORD_NESTING = 32


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


def _read_csv(
    path: Path, prompt_column: str = "prompt", columns: tuple[str, ...] | None = None
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    display = str(path)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ManifestError(display, 1, "header", str(exc)) from exc
        if not header or prompt_column not in header:
            raise ManifestError(
                display, 1, prompt_column, f"the header has no {prompt_column!r} column"
            )
        absent = [column for column in columns or () if column not in header]
        if absent:
            raise ManifestError(
                display, 1, absent[0], "is listed in columns: but is not in the header"
            )
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
            prompt = row.pop(prompt_column).strip()
            if not prompt:
                raise ManifestError(display, line, prompt_column, "must not be empty")
            yield prompt, _kept(row, columns), f"{display}:{line}"


def _kept(row: dict[str, Any], columns: tuple[str, ...] | None) -> dict[str, Any]:
    return row if columns is None else {name: row[name] for name in columns if name in row}


def _read_jsonl(
    path: Path, prompt_column: str = "prompt", columns: tuple[str, ...] | None = None
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    display = str(path)
    with _open_text(path) as handle:
        for number, raw in enumerate(_decode_guard(path, iter(handle)), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ManifestError(display, number, "json", exc.msg) from exc
            except RecursionError:
                raise ManifestError(display, number, "json", "nested too deeply") from None
            except ValueError:  # a number of more digits than Python converts
                raise ManifestError(display, number, "json", "a number too long to use") from None
            if _deeper_than(record, MAX_RECORD_NESTING):
                raise ManifestError(
                    display, number, "json", f"nested more than {MAX_RECORD_NESTING} levels deep"
                )
            if not isinstance(record, dict):
                raise ManifestError(display, number, "json", "each line must be a JSON object")
            prompt = record.pop(prompt_column, None)
            if not isinstance(prompt, str):
                problem = (
                    "missing" if prompt is None else f"must be a string, got {type_name(prompt)}"
                )
                raise ManifestError(display, number, prompt_column, problem)
            if not prompt.strip():
                raise ManifestError(display, number, prompt_column, "must not be empty")
            yield prompt.strip(), _kept(record, columns), f"{display}:{number}"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value``."""
    level = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True
