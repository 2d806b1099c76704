"""metadata.jsonl: rows per image, and the real Hugging Face loader reading a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.store.dataset import METADATA_NAME, image_rows
from tests.helpers import World

SUCCESS = {
    "id": "u1",
    "status": "success",
    "model": "model_x",
    "prompt": "a red mug",
    "width": 64,
    "height": 32,
    "params": {"guidance": 3.5, "numOutputs": 2},
    "seed": 7,
    "job_id": "job1",
    "cost": 2.0,
    "files": ["images/u1_0.png", "images/u1_1.png"],
    "metadata": {"sku": "A1", "model": "clashes with ours"},
    "source": "prompts.csv:2",
}


@pytest.mark.parametrize(
    ("result", "prefix", "expected"),
    [
        (
            SUCCESS,
            "",
            [
                {"file_name": "images/u1_0.png", "image_index": 0, "sku": "A1"},
                {"file_name": "images/u1_1.png", "image_index": 1, "sku": "A1"},
            ],
        ),
        # A shard's images, seen from the output root.
        (SUCCESS, "shard-1-of-2/", [{"file_name": "shard-1-of-2/images/u1_0.png"}, {}]),
        # Failed units have no images, so no rows.
        ({**SUCCESS, "status": "failure", "files": []}, "", []),
    ],
)
def test_one_row_per_image(result: dict, prefix: str, expected: list[dict]) -> None:
    rows = list(image_rows(result, prefix))
    assert len(rows) == len(expected)
    for row, wanted in zip(rows, expected, strict=True):
        assert wanted.items() <= row.items()
        assert (row["unit_id"], row["prompt"], row["model"]) == ("u1", "a red mug", "model_x")
        assert (row["width"], row["height"], row["seed"], row["cost"]) == (64, 32, 7, 2.0)
        # One type per column whatever the manifest holds; an extra column never
        # hides one of ours.
        assert json.loads(row["params"]) == SUCCESS["params"]
        assert row["extra_model"] == "clashes with ours"


CSV_MANIFEST = """\
model: model_sim-fast
width: 64
height: 48
filename: "{entry}/{index:04d}-{slug}"
jobs:
  - prompts_file: prompts.csv
    params: {numOutputs: 2, seed: per-unit}
  - prompt: "a {animal}"
    vars: {animal: [cat, lynx]}
"""
CSV = "prompt,sku,colour\nred mug,A1,red\nblue mug,B2,blue\n"


def load_imagefolder(data_dir: Path) -> object:
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[dataset-test]'")
    pytest.importorskip("PIL", reason="pip install -e '.[dataset-test]'")
    return datasets.load_dataset(
        "imagefolder", data_dir=str(data_dir), split="train", cache_dir=str(data_dir.parent / "hf")
    )


@pytest.fixture
def csv_run(write: Callable[[str, str], Path], tmp_path: Path) -> tuple[Path, World]:
    """A manifest of a CSV with extra columns and a template, and a world to run it in."""
    write("prompts.csv", CSV)
    return write("jobs.yaml", CSV_MANIFEST), World(tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_output_loads_with_the_real_datasets_imagefolder_loader(
    csv_run: tuple[Path, World],
) -> None:
    manifest, world = csv_run
    sim, out = world.sim, world.out
    assert world.run(manifest).exit_code == 0
    rows = [json.loads(line) for line in (out / METADATA_NAME).read_text().splitlines()]
    assert len(rows) == 2 * 2 + 2 and all((out / r["file_name"]).is_file() for r in rows)
    assert {r["file_name"].rsplit("/", 1)[0] for r in rows} == {"images/jobs-0", "images/jobs-1"}

    dataset = load_imagefolder(out)
    assert len(dataset) == 6  # type: ignore[arg-type]
    by_sku = {}
    for item in dataset:  # type: ignore[attr-defined]
        assert item["image"].size == (64, 48)
        assert item["model"] == "model_sim-fast" and item["job_id"] in sim.jobs
        if item["sku"] is not None:
            by_sku.setdefault(item["sku"], []).append(item)
    assert sorted(by_sku) == ["A1", "B2"]
    assert {item["colour"] for item in by_sku["A1"]} == {"red"}
    assert all(isinstance(item["seed"], int) for items in by_sku.values() for item in items)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_shards_make_one_dataset_at_the_output_root(csv_run: tuple[Path, World]) -> None:
    manifest, world = csv_run
    root = world.out
    for shard in ("1/2", "2/2"):
        assert world.run(manifest, shard=shard).exit_code == 0
    assert not list(root.glob(f"shard-*/{METADATA_NAME}"))
    rows = [json.loads(line) for line in (root / METADATA_NAME).read_text().splitlines()]
    assert len(rows) == 6 and {r["file_name"].split("/")[0] for r in rows} == {
        "shard-1-of-2",
        "shard-2-of-2",
    }
    assert main(["validate", str(manifest), "--offline"]) == 0
    assert len(load_imagefolder(root)) == 6  # type: ignore[arg-type]


def test_an_extra_column_of_mixed_kinds_is_written_as_strings() -> None:
    from batchgen.store.dataset import extra_kinds, mixed

    lines = [
        {**SUCCESS, "metadata": {"n": 3, "tags": ["a"], "same": "x"}},
        {**SUCCESS, "metadata": {"n": "three", "same": "y", "label": 1}},
    ]
    kinds = extra_kinds(lines)
    assert mixed(kinds) == {"n"} and kinds["extra_label"] == "number"
    rows = [row for line in lines for row in image_rows(line, "", mixed(kinds))]
    assert {row["n"] for row in rows} == {"3", "three"}
    assert rows[0]["tags"] == '["a"]'  # a list is a JSON string, never a nested column
    assert "label" not in rows[2] and rows[2]["extra_label"] == 1
    assert (rows[0]["entry"], rows[0]["repeat"]) == (None, None)  # older lines lack them


DIFFICULT = """\
model: model_sim-fast
width: 64
height: 48
jobs:
  - prompts_file: prompts.jsonl
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_columns_that_would_break_the_loader_do_not(
    write: Callable[[str, str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A column named image, one named label, and one of numbers and strings; then a
    # second run whose new rows change a column's kind.
    lines = [
        {"prompt": "a", "image": "foo", "label": "cat", "n": 3},
        {"prompt": "b", "image": "bar", "label": "dog", "n": 4},
    ]
    write("prompts.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    manifest = write("jobs.yaml", DIFFICULT)
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    assert "'image' is written as 'extra_image'" in caplog.text
    dataset = load_imagefolder(world.out)
    item = dataset[0]  # type: ignore[index]
    assert item["image"].size == (64, 48) and item["extra_image"] in ("foo", "bar")
    assert item["entry"] == "jobs[0]" and item["repeat"] == 0

    write(
        "prompts.jsonl",
        "".join(json.dumps(line) + "\n" for line in [*lines, {"prompt": "c", "n": "three"}]),
    )
    assert world.run(manifest).succeeded == 1
    assert "'n' holds values of more than one kind" in caplog.text
    again = load_imagefolder(world.out)
    assert sorted(again["n"]) == ["3", "4", "three"]  # type: ignore[index]


def test_a_run_with_no_image_writes_no_metadata_file(
    write: Callable[[str, str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write(
        "jobs.yaml", "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: forbidden\n"
    )
    world = World(tmp_path)
    caplog.set_level("INFO", logger="batchgen")
    assert world.run(manifest).exit_code == 1
    assert not (world.out / METADATA_NAME).exists()
    assert "no image yet, so no metadata file" in caplog.text
