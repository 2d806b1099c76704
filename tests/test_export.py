"""batchgen export: each format loaded by its real library (the dataset-test extra)."""

from __future__ import annotations

import gc
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import batchgen
from batchgen.cli import main
from batchgen.store.export import ExportError
from tests.helpers import World, every_verdict, quality_manifest

Write = Callable[[str, str], Path]

MANIFEST = """\
model: model_sim-fast
width: 64
height: 48
jobs:
  - prompts_file: prompts.jsonl
    params: {numOutputs: 2}
  - prompt: "a {animal}"
    vars: {animal: [cat, lynx, owl]}
"""
LINES = [
    {"prompt": "red mug", "sku": "A1", "image": "would hide the picture", "n": 1},
    {"prompt": "blue mug", "sku": "B2", "n": "two"},
]
IMAGES = 2 * 2 + 3


@pytest.fixture
def done(write: Write, tmp_path: Path) -> World:
    write("prompts.jsonl", "".join(json.dumps(line) + "\n" for line in LINES))
    world = World(tmp_path)
    assert world.run(write("jobs.yaml", MANIFEST)).exit_code == 0
    return world


# The webdataset reader leaves its tar files for the garbage collector to close.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_webdataset_shards_load_with_the_webdataset_reader(done: World, tmp_path: Path) -> None:
    dest = tmp_path / "wds"
    exported = batchgen.export(done.out, dest, "webdataset", shard_size=3)
    assert exported.images == IMAGES and len(exported.files) == 3  # 3 + 3 + 1
    with tarfile.open(exported.files[0]) as first:
        names = first.getnames()
    assert len(names) == 6 and names[0].endswith(".png") and names[1].endswith(".json")
    webdataset = pytest.importorskip("webdataset")
    pytest.importorskip("PIL")
    samples = list(webdataset.WebDataset(exported.files, shardshuffle=False).decode("pil"))
    assert len(samples) == IMAGES
    assert all(sample["png"].size == (64, 48) for sample in samples)
    rows = [sample["json"] for sample in samples]
    assert {row["prompt"] for row in rows} == {"red mug", "blue mug", "a cat", "a lynx", "a owl"}
    assert {row.get("n") for row in rows} <= {"1", "two", None}  # one kind per column
    del samples
    gc.collect()  # the reader's files closed here, where their warnings are ignored


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_parquet_loads_with_datasets_as_images(done: World, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[dataset-test]'")
    pytest.importorskip("pyarrow")
    exported = batchgen.export(done.out, tmp_path / "pq", "parquet", shard_size=4)
    assert exported.images == IMAGES and len(exported.files) == 2
    loaded = datasets.load_dataset(
        "parquet", data_files=exported.files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded) == IMAGES
    assert loaded[0]["image"].size == (64, 48)
    assert {row["extra_image"] for row in loaded} == {"would hide the picture", None}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_imagefolder_is_clean_and_has_a_dataset_card(done: World, tmp_path: Path) -> None:
    dest = tmp_path / "folder"
    exported = batchgen.export(done.out, dest, "imagefolder")
    assert exported.images == IMAGES
    assert not (dest / "journal.sqlite3").exists() and not (dest / ".batchgen.lock").exists()
    card = (dest / "README.md").read_text()
    assert card.startswith("---\n") and "num_examples: 7" in card and "model_sim-fast" in card
    assert "prompts.jsonl" in card
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[dataset-test]'")
    pytest.importorskip("PIL")
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(dest), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded) == IMAGES and loaded[0]["image"].size == (64, 48)


def test_an_image_not_as_recorded_stops_the_export(done: World, tmp_path: Path) -> None:
    victim = done.out / str(done.results()[0]["files"][0])  # type: ignore[index]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n changed")
    with pytest.raises(ExportError, match="verify --fix"):
        batchgen.export(done.out, tmp_path / "wds", "webdataset")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert main(["export", str(done.out), str(tmp_path / "busy")]) == 2


def test_a_sharded_output_exports_as_one(write: Write, tmp_path: Path) -> None:
    write("prompts.jsonl", "".join(json.dumps(line) + "\n" for line in LINES))
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    for shard in ("1/2", "2/2"):
        world.run(manifest, shard=shard)
    exported = batchgen.export(world.out, tmp_path / "wds", "webdataset", shard_size=100)
    assert exported.images == IMAGES


@pytest.fixture
def gated(write: Write, tmp_path: Path) -> World:
    """60 units at high sensitivity (fail below 35, warn below 55): no warn among them
    is a chance of 0.8 ** 60, about one in a million."""
    manifest = quality_manifest(60, "{on_fail: keep, sensitivity: high}", height=48)
    return every_verdict(World(tmp_path), write("jobs.yaml", manifest))


def passed_ids(world: World) -> set[str]:
    return {str(r["id"]) for r in world.results() if r["quality_verdict"] == "pass"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_only_passed_parquet_keeps_exactly_the_passing_images(gated: World, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[dataset-test]'")
    pytest.importorskip("pyarrow")
    exported = batchgen.export(gated.out, tmp_path / "pq", "parquet", only_passed=True)
    loaded = datasets.load_dataset(
        "parquet", data_files=exported.files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert {row["unit_id"] for row in loaded} == passed_ids(gated)
    assert exported.images == len(passed_ids(gated))
    assert {row["quality_verdict"] for row in loaded} == {"pass"}
    assert all(isinstance(row["quality_score"], int | float) for row in loaded)
    assert all(row["quality_attempt"] == 0 for row in loaded)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_webdataset_rows_carry_the_verdict_and_where_filters_them(
    gated: World, tmp_path: Path
) -> None:
    webdataset = pytest.importorskip("webdataset")
    everything = batchgen.export(gated.out, tmp_path / "all", "webdataset")
    rows = [s["json"] for s in webdataset.WebDataset(everything.files, shardshuffle=False).decode()]
    assert len(rows) == 60
    by_unit = {r["id"]: r for r in gated.results()}
    for row in rows:
        record = by_unit[row["unit_id"]]
        assert (row["quality_verdict"], row["quality_score"]) == (
            record["quality_verdict"],
            record["quality_score"],
        )
        assert json.loads(row["quality_reasons"]) == record["quality_reasons"]
    not_failed = batchgen.export(
        gated.out, tmp_path / "nf", "webdataset", where=["quality_verdict != fail"]
    )
    kept = [s["json"] for s in webdataset.WebDataset(not_failed.files, shardshuffle=False).decode()]
    expected = {u for u, r in by_unit.items() if r["quality_verdict"] != "fail"}
    assert {row["unit_id"] for row in kept} == expected
    scored = batchgen.export(
        gated.out,
        tmp_path / "s",
        "webdataset",
        where=["quality_score >= 50", "model in x,model_sim-fast"],
    )
    assert scored.images == sum(r["quality_score"] >= 50 for r in by_unit.values())
    gc.collect()


def test_a_selection_no_image_can_meet_is_refused(done: World, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no quality: block"):
        batchgen.export(done.out, tmp_path / "x", only_passed=True)
    assert not (tmp_path / "x").exists()
    assert main(["export", str(done.out), str(tmp_path / "y"), "--where", "score >>= 3"]) == 2
    assert main(["export", str(done.out), str(tmp_path / "z"), "--where", "prompt == red mug"]) == 0
    assert len(list((tmp_path / "z" / "images").rglob("*.png"))) == 2  # its two outputs


def test_every_column_of_ours_has_its_one_type_in_parquet() -> None:
    from batchgen.store.dataset import OWN_COLUMNS
    from batchgen.store.export import OWN_DTYPES

    assert list(OWN_DTYPES) == list(OWN_COLUMNS)
