"""A finished output directory as the formats dataset builders load: WebDataset tar
shards, Parquet with the image bytes, or a clean ``imagefolder`` with a dataset card.

Each reads the journal's downloaded units (every shard's, from an output root) and the
files on disk, one unit at a time; nothing is held but the current shard.  The rows are
``metadata.jsonl``'s (:mod:`.dataset`), with the same column rules, so a column cannot
break the loader in any format.  A file not as recorded (missing, or another sha256)
stops the export: ``batchgen verify --fix`` first.

- **webdataset**: ``DEST/<name>-000000.tar``, ... of ``--shard-size`` samples each, a
  sample being ``KEY.<ext>`` (the image) and ``KEY.json`` (its row), ``KEY`` the unit id
  and image index: the format the ``webdataset`` reader and ``datasets`` load.
- **parquet**: ``DEST/<name>-000000.parquet``, ... with an ``image`` column of
  ``{bytes, path}`` and the schema's Hugging Face features, so ``datasets`` reads it as
  images (needs ``pyarrow``: ``pip install 'scenario-batchgen[export]'``).
- **imagefolder**: ``DEST/images/...`` hard-linked (copied across file systems),
  ``DEST/metadata.jsonl`` and ``DEST/README.md``, a dataset card whose YAML header says
  the features, the size, the models and where the prompts came from; no journal, no
  lock.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .dataset import (
    IMAGE_PATH_SUFFIXES,
    METADATA_NAME,
    Kinds,
    extra_kinds,
    image_rows,
    mixed,
)
from .embed import embed
from .files import sha256_of
from .select import EVERYTHING, Selection

FORMATS = ("webdataset", "parquet", "imagefolder")
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Source:
    """One output directory's results lines, and where its files are (``prefix``: the
    path from the root exported to it)."""

    place: Path
    prefix: str
    lines: Iterable[str]
    # The directory exported, which the rows' paths are relative to (``place`` itself
    # unless it is a shard's).
    root: Path | None = None
    # For an output in a bucket: reads a file by its path from the root exported (the
    # files are objects there, not under ``place``).
    read: Callable[[str], bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class Exported:
    format: str
    images: int
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "images": self.images, "files": self.files}


class ExportError(ConfigError):
    """The output cannot be exported as it is (a file missing or altered, a format's
    library not installed, a destination that is not empty)."""


def export(
    sources: Callable[[], list[Source]],
    dest: Path,
    kind: str,
    *,
    name: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    embed_metadata: bool = False,
    written: Callable[[Path], None] = lambda path: None,
    selection: Selection = EVERYTHING,
) -> Exported:
    """Write the images of ``sources`` that ``selection`` keeps (``sources`` is called
    once a pass: the lines are read twice, first for the columns' kinds) to ``dest`` as
    ``kind``.  ``written`` is told of each
    file of ``dest`` once it is complete (an export to a bucket sends it on, and
    removes it: only a shard at a time is ever on disk)."""
    if kind not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {kind!r}")
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest}: not empty; export into a new directory")
    kinds = extra_kinds(json.loads(line) for source in sources() for line in source.lines)
    if selection:
        _check_columns(sources(), mixed(kinds), selection)
    dest.mkdir(parents=True, exist_ok=True)
    samples = _samples(sources(), mixed(kinds), embed_metadata, selection)
    if kind == "webdataset":
        files, images = _webdataset(samples, dest, name, shard_size, written)
    elif kind == "parquet":
        files, images = _parquet(samples, dest, name, shard_size, kinds, written)
    else:
        files, images = _imagefolder(samples, dest, name, kinds, written)
    return Exported(kind, images, [str(path) for path in files])


@dataclass(frozen=True, slots=True)
class Sample:
    key: str
    name: str  # the image's file name
    row: dict[str, Any]  # metadata.jsonl's row, file_name relative to the root exported
    root: Path  # the root exported
    read: Callable[[], bytes]  # the image's bytes, checked against its sha256
    read_input: Callable[[str], bytes]  # an input image's, by its path from the root
    mtime: int
    local: Path | None = None  # the image on disk, when it is a file (it is linked)
    embedded: bool = False  # its story written into the copy (see store.embed)

    def content(self) -> bytes:
        content = self.read()
        return embed(content, self.row) if self.embedded else content

    def input_files(self) -> Iterator[str]:
        """The paths (from the root) of the images it was made from."""
        for column, value in self.row.items():
            if column == "file_name" or not column.endswith(IMAGE_PATH_SUFFIXES):
                continue
            yield from value if isinstance(value, list) else [value]


def _check_columns(sources: list[Source], as_text: set[str], selection: Selection) -> None:
    """A selection on a column no image has is a mistake (a typo, or no quality gate
    in the run), not an empty dataset."""
    missing = set(selection.columns)
    for source in sources:
        for line in source.lines:
            for row in image_rows(json.loads(line), source.prefix, as_text):
                missing -= row.keys()
                if not missing:
                    return
    hint = " (the run had no quality: block)" if any("quality" in c for c in missing) else ""
    raise ExportError(f"no image has the column {', '.join(sorted(missing))}{hint}")


def _samples(
    sources: list[Source], as_text: set[str], embedded: bool, selection: Selection = EVERYTHING
) -> Iterator[Sample]:
    now = int(time.time())
    for source in sources:
        root = source.root or source.place
        for line in source.lines:
            result = json.loads(line)
            digests = result.get("sha256") or []
            for index, row in enumerate(image_rows(result, source.prefix, as_text)):
                if not selection.keeps(row):
                    continue
                relative = result["files"][index]
                digest = digests[index] if index < len(digests) else None
                key = f"{result['id']}_{index}"
                name = Path(relative).name
                if source.read is not None:
                    read = functools.partial(
                        _verified, source.read, source.prefix + relative, digest
                    )
                    yield Sample(
                        key, name, row, root, read, _input_reader(source.read), now, None, embedded
                    )
                    continue
                path = source.place / relative
                if not path.is_file() or (digest is not None and sha256_of(path) != digest):
                    raise ExportError(
                        f"{path}: missing or not the image recorded; run batchgen verify "
                        "--fix first"
                    )
                mtime = int(path.stat().st_mtime)
                yield Sample(
                    key, name, row, root, path.read_bytes, _file_reader(root), mtime, path, embedded
                )


def _verified(read: Callable[[str], bytes | None], relative: str, digest: str | None) -> bytes:
    content = read(relative)
    if content is None or (digest is not None and hashlib.sha256(content).hexdigest() != digest):
        raise ExportError(f"{relative}: missing or not the image recorded; run batchgen verify")
    return content


def _input_reader(read: Callable[[str], bytes | None]) -> Callable[[str], bytes]:
    def read_input(relative: str) -> bytes:
        content = read(relative)
        if content is None:
            raise ExportError(f"{relative}: an input image recorded is missing")
        return content

    return read_input


def _file_reader(root: Path) -> Callable[[str], bytes]:
    return lambda relative: (root / relative).read_bytes()


def _webdataset(
    samples: Iterator[Sample], dest: Path, name: str, size: int, written: Callable[[Path], None]
) -> tuple[list[Path], int]:
    files: list[Path] = []
    archive: tarfile.TarFile | None = None
    number = 0
    try:
        for number, sample in enumerate(samples, start=1):
            if (number - 1) % size == 0:
                if archive is not None:
                    archive.close()
                    written(files[-1])
                files.append(dest / f"{name}-{len(files):06d}.tar")
                archive = tarfile.open(files[-1], "w", format=tarfile.USTAR_FORMAT)
            assert archive is not None
            suffix = Path(sample.name).suffix.lstrip(".").lower() or "png"
            image = sample.content()
            picture = tarfile.TarInfo(f"{sample.key}.{suffix}")
            picture.size = len(image)
            picture.mtime = sample.mtime
            archive.addfile(picture, io.BytesIO(image))
            text = json.dumps(sample.row, ensure_ascii=False).encode()
            info = tarfile.TarInfo(f"{sample.key}.json")
            info.size = len(text)
            info.mtime = sample.mtime
            archive.addfile(info, io.BytesIO(text))
    finally:  # also when an image fails its check half way through a shard
        if archive is not None:
            archive.close()
    if archive is not None:
        written(files[-1])
    return files, number


def _parquet(
    samples: Iterator[Sample],
    dest: Path,
    name: str,
    size: int,
    kinds: Kinds,
    written: Callable[[Path], None],
) -> tuple[list[Path], int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            "--format parquet needs pyarrow: pip install 'scenario-batchgen[export]'"
        ) from None
    files: list[Path] = []
    batch: list[Sample] = []
    images = 0
    # One schema for every file, whatever columns each file's rows happen to have.
    columns = _dtypes(kinds)
    arrow = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    arrow["bool"] = pa.bool_()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    features.update({c: {"dtype": t, "_type": "Value"} for c, t in columns.items()})
    schema = pa.schema(
        [("image", image), *((column, arrow[kind]) for column, kind in columns.items())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )

    def flush() -> None:
        rows = [{"image": {"bytes": s.content(), "path": s.name}, **s.row} for s in batch]
        files.append(dest / f"{name}-{len(files):06d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), files[-1])
        written(files[-1])
        batch.clear()

    for sample in samples:
        images += 1
        batch.append(sample)
        if len(batch) >= size:
            flush()
    if batch:
        flush()
    return files, images


OWN_DTYPES = {
    "file_name": "string",
    "unit_id": "string",
    "image_index": "int64",
    "prompt": "string",
    "model": "string",
    "width": "int64",
    "height": "int64",
    "params": "string",
    "seed": "int64",
    "entry": "string",
    "repeat": "int64",
    "job_id": "string",
    "cost": "float64",
    "source": "string",
    "quality_verdict": "string",
    "quality_score": "float64",
    "quality_reasons": "string",
    "quality_attempt": "int64",
}
_EXTRA_DTYPES = {"number": "float64", "bool": "bool"}


def _dtypes(kinds: Kinds) -> dict[str, str]:
    """Every column's one type: batchgen's own, then the extra columns' (numbers as
    float64, a column of more than one kind as strings)."""
    extras = {column: _EXTRA_DTYPES.get(kind, "string") for column, kind in sorted(kinds.items())}
    return {**OWN_DTYPES, **extras}


def _imagefolder(
    samples: Iterator[Sample], dest: Path, name: str, kinds: Kinds, written: Callable[[Path], None]
) -> tuple[list[Path], int]:
    rows = []
    models: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    # Input images shared by many samples go once (not by looking at DEST: a file sent
    # on to a bucket is no longer there).
    inputs_done: set[str] = set()
    for sample in samples:
        relative = Path(sample.row["file_name"])
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if sample.embedded or sample.local is None:
            target.write_bytes(sample.content())
        else:
            _link(sample.local, target)
        written(target)
        for relative_input in sample.input_files():
            target_input = dest / relative_input
            if relative_input not in inputs_done:
                inputs_done.add(relative_input)
                target_input.parent.mkdir(parents=True, exist_ok=True)
                if sample.local is None:
                    target_input.write_bytes(sample.read_input(relative_input))
                else:
                    _link(sample.root / relative_input, target_input)
                written(target_input)
        rows.append(json.dumps(sample.row, ensure_ascii=False))
        models[str(sample.row.get("model"))] += 1
        origins[str(sample.row.get("source") or "").rsplit(":", 1)[0]] += 1
    metadata = dest / METADATA_NAME
    metadata.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    written(metadata)
    card = dest / "README.md"
    card.write_text(_card(name, len(rows), models, origins, kinds), encoding="utf-8")
    written(card)
    return [metadata, card], len(rows)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _card(name: str, images: int, models: Counter[str], origins: Counter[str], kinds: Kinds) -> str:
    features = [("image", "image"), *_dtypes(kinds).items()]
    lines = ["---", f"pretty_name: {json.dumps(name)}", "tags:", "- batchgen", "- synthetic"]
    lines += ["task_categories:", "- text-to-image", "size_categories:", f"- {_size(images)}"]
    lines += ["dataset_info:", "  features:"]
    for column, kind in features:
        lines += [f"  - name: {json.dumps(column)}", f"    dtype: {kind}"]
    lines += ["  splits:", "  - name: train", f"    num_examples: {images}", "---", ""]
    lines += [f"# {name}", "", f"{images} images generated with Scenario's API by batchgen.", ""]
    lines += ["Models:", ""] + [f"- `{m}`: {n} images" for m, n in models.most_common()]
    lines += ["", "Prompts from:", ""]
    lines += [f"- `{o or 'the manifest'}`: {n} images" for o, n in origins.most_common()]
    return "\n".join(lines) + "\n"


def _size(images: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if images < bound:
            return label
    return "100K<n<1M" if images < 1_000_000 else "1M<n<10M"
