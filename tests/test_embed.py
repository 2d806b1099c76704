"""Images that carry their own story: chunks inserted, pixels untouched, read back with
Pillow (the dataset-test extra)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import batchgen
from batchgen.store.embed import DIGITAL_SOURCE_TYPE, embed, parameters_text
from tests.helpers import World

ROW = {
    "prompt": "a red mug on a table",
    "model": "model_sim-fast",
    "seed": 42,
    "width": 64,
    "height": 48,
    "job_id": "job_1",
    "params": json.dumps({"negativePrompt": "blurry", "numInferenceSteps": 28, "guidance": 3.5}),
}


def test_the_parameters_text_is_automatic1111s_form() -> None:
    assert parameters_text(ROW) == (
        "a red mug on a table\nNegative prompt: blurry\n"
        "Steps: 28, CFG scale: 3.5, Seed: 42, Size: 64x48, Model: model_sim-fast, Job: job_1"
    )


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "WEBP-lossless"])
def test_each_format_keeps_its_pixels_and_gains_its_story(kind: str) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="pip install -e '.[dataset-test]'")
    picture = image_module.new("RGB", (64, 48), (200, 30, 30))
    made = io.BytesIO()
    options = {"lossless": True} if kind == "WEBP-lossless" else {}
    picture.save(made, kind.split("-")[0], **options)
    original = made.getvalue()
    written = embed(original, ROW)
    assert written != original
    with (
        image_module.open(io.BytesIO(original)) as before,
        image_module.open(io.BytesIO(written)) as after,
    ):
        assert after.size == before.size and after.tobytes() == before.tobytes()
        if kind == "PNG":
            assert after.text["parameters"] == parameters_text(ROW)
            assert DIGITAL_SOURCE_TYPE in after.info["XML:com.adobe.xmp"]
        else:
            xmp = after.info.get("xmp")
            assert xmp is not None and DIGITAL_SOURCE_TYPE.encode() in xmp
            assert b"a red mug on a table" in xmp
    # Only inserted: every byte of the original is still there, in order.
    if kind == "PNG":
        assert written[:33] == original[:33] and written.endswith(original[33:])
    exiftool = shutil.which("exiftool")
    if exiftool is not None:  # a second reader, where it is installed
        read = subprocess.run([exiftool, "-j", "-"], input=written, capture_output=True, check=True)
        (tags,) = json.loads(read.stdout)
        assert tags["DigitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert tags["Description"] == "a red mug on a table"
        assert "Warning" not in tags
        if kind == "PNG":
            assert tags["Parameters"] == parameters_text(ROW)


def test_an_export_embeds_the_story_and_the_pixels_are_the_served_ones(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="pip install -e '.[dataset-test]'")
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 48\njobs:\n"
        "  - {prompt: a lighthouse, params: {negativePrompt: fog}}\n",
    )
    world = World(tmp_path)
    world.run(manifest)
    exported = batchgen.export(world.out, tmp_path / "clean", "imagefolder", embed_metadata=True)
    assert exported.images == 1
    (record,) = world.results()
    served = world.sim.assets[world.sim.jobs[record["job_id"]].asset_ids[0]].content()
    copy = tmp_path / "clean" / record["files"][0]
    with image_module.open(copy) as embedded, image_module.open(io.BytesIO(served)) as original:
        assert embedded.text["parameters"].startswith("a lighthouse\nNegative prompt: fog")
        assert DIGITAL_SOURCE_TYPE in embedded.info["XML:com.adobe.xmp"]
        assert embedded.tobytes() == original.tobytes()
    # The run's own file is left as it was served.
    assert (world.out / record["files"][0]).read_bytes() == served


def test_a_run_can_write_the_story_into_its_own_files_and_verify_follows(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="pip install -e '.[dataset-test]'")
    manifest = write(
        "jobs.yaml", "model: model_sim-fast\nwidth: 64\nheight: 48\njobs:\n  - prompt: a kite\n"
    )
    world = World(tmp_path)
    assert world.run(manifest, embed_metadata=True).exit_code == 0
    (record,) = world.results()
    path = world.out / record["files"][0]
    asset_id = world.sim.jobs[record["job_id"]].asset_ids[0]
    served = world.sim.assets[asset_id].content()
    with image_module.open(path) as written, image_module.open(io.BytesIO(served)) as original:
        assert written.text["parameters"].startswith("a kite\nSeed: ")
        assert written.tobytes() == original.tobytes()
    assert record["served_sha256"] == [
        world.sim.served_sha256[world.sim.jobs[record["job_id"]].asset_ids[0]]
    ]
    assert batchgen.verify(world.out).intact  # the file as written is what was recorded
    embedded = path.read_bytes()
    path.unlink()
    fixed = world.call(lambda: batchgen.averify(world.out, fix=True, backend=world.backend))
    assert fixed.fixed == 1 and path.read_bytes() == embedded  # written in again
    assert world.run(manifest, embed_metadata=True).already_done == 1
