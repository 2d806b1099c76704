"""Batches that start from images: a folder of sketches times prompts, each sketch
uploaded once (across lost answers, kills and reruns), the pairs recorded and loadable."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.errors import ConfigError
from batchgen.manifest import iter_units, load_manifest
from batchgen.sim.png import make_png
from tests.helpers import World, assert_matches_what_was_served

Write = Callable[[str, str], Path]

MANIFEST = """\
model: model_sim-img2img
width: 64
height: 64
jobs:
  - images: sketches/*.png
    prompt: "{style} version"
    vars: {style: [ink, paint]}
    inputs: {referenceImages: [refs/a.png, refs/b.png]}
"""


def sketches(tmp_path: Path, count: int = 3) -> None:
    (tmp_path / "sketches").mkdir(exist_ok=True)
    for n in range(count):
        (tmp_path / "sketches" / f"s{n}.png").write_bytes(make_png(32, 32, f"sketch {n}"))
    (tmp_path / "refs").mkdir(exist_ok=True)
    for name in ("a", "b"):
        (tmp_path / "refs" / f"{name}.png").write_bytes(make_png(16, 16, f"ref {name}"))


def uploads_by_name(world: World) -> Counter[str]:
    return Counter(upload.name for upload in world.sim.uploads.values())


def test_a_folder_of_sketches_times_prompts_uploads_each_file_once(
    write: Write, tmp_path: Path
) -> None:
    sketches(tmp_path)
    world = World(tmp_path)
    report = world.run(write("jobs.yaml", MANIFEST))
    assert report.exit_code == 0 and report.succeeded == 3 * 2
    assert len(world.sim.uploads) == 3 + 2  # three sketches, two references: once each
    results = world.results()
    assert_matches_what_was_served(world.out, results, world.sim)
    for record in results:
        (image,) = record["inputs"]["image"]
        assert Path(image["path"]).parent.name == "sketches"
        assert (world.out / image["file"]).read_bytes() == Path(image["path"]).read_bytes()
        assert len(record["inputs"]["referenceImages"]) == 2
        # What the job was given is the unit's own sketch, and the output depends on it.
        job = world.sim.jobs[record["job_id"]]
        assert job.body["image"] == image["asset_id"]
        assert world.sim.uploads[image["asset_id"]].content == Path(image["path"]).read_bytes()
        assert image["asset_id"] in world.sim.assets[job.asset_ids[0]].inputs
    rows = [json.loads(line) for line in (world.out / "metadata.jsonl").read_text().splitlines()]
    assert all((world.out / row["input_image_file_name"]).is_file() for row in rows)
    assert all(len(row["referenceImages_file_names"]) == 2 for row in rows)
    # Provenance: each input's own path and the asset it was uploaded as, in the row.
    by_unit = {record["id"]: record for record in results}
    for row in rows:
        (image,) = by_unit[row["unit_id"]]["inputs"]["image"]
        assert row["input_image_source"] == image["path"]
        assert world.sim.uploads[row["input_image_asset_id"]].content == (
            (world.out / row["input_image_file_name"]).read_bytes()
        )
        assert [Path(p).name for p in row["referenceImages_sources"]] == ["a.png", "b.png"]
        assert all(a in world.sim.uploads for a in row["referenceImages_asset_ids"])

    again = World(tmp_path / "again")  # another directory, the same files: ids unchanged
    again.run(write("jobs.yaml", MANIFEST))
    assert {r["id"] for r in again.results()} == {r["id"] for r in results}


def test_lost_upload_answers_and_a_rerun_never_upload_a_file_twice(
    write: Write, tmp_path: Path
) -> None:
    sketches(tmp_path, count=4)
    world = World(tmp_path, lose_answer_rate=0.5, seed=11)
    manifest = write("jobs.yaml", MANIFEST)
    first = world.run(manifest, concurrency=4, max_runtime=3)
    assert world.sim.answers_lost > 0
    world.configure(lose_answer_rate=0.0)
    final = world.run(manifest, concurrency=4)
    assert final.exit_code == 0 and first.succeeded + final.succeeded == 8
    names = uploads_by_name(world)
    assert len(names) == 4 + 2 and max(names.values()) == 1  # each file uploaded once
    assert world.sim.jobs_created == 8


def test_a_run_killed_after_sending_an_upload_finds_its_asset(write: Write, tmp_path: Path) -> None:
    """The journal says an upload was sent and no answer recorded (the process died):
    the next run finds the asset by its name instead of uploading again."""
    import base64

    from batchgen.engine.uploads import upload_name
    from batchgen.manifest.expand import hashed
    from batchgen.sim.records import SimRequest
    from batchgen.store.journal import Journal

    sketches(tmp_path, count=1)
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    sketch = hashed(tmp_path / "sketches" / "s0.png")
    name = upload_name(sketch)
    journal = Journal(world.out)
    try:
        journal.uploading(sketch.sha256, name, "2027-01-15T07:59:00+00:00", sketch.size)
    finally:
        journal.close()
    body = {"name": name, "image": base64.b64encode(sketch.path.read_bytes()).decode()}
    headers = {"Authorization": world.sim._expected_auth.decode()}
    sent = world.sim.handle(
        SimRequest("POST", "/v1/assets", {}, headers, json.dumps(body).encode())
    )
    assert sent.status == 200  # the upload the dead run sent, which made its asset

    assert world.run(manifest).exit_code == 0
    assert uploads_by_name(world)[name] == 1  # found, not sent again
    assert {r["inputs"]["image"][0]["asset_id"] for r in world.results()} == {
        sent.payload["asset"]["id"]
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: (p / "sketches" / "s0.png").write_text("not an image"), "not a PNG"),
        (
            lambda p: (p / "jobs.yaml").write_text(
                (p / "jobs.yaml").read_text().replace("referenceImages", "styleImages")
            ),
            "takes no input 'styleImages'; its image inputs: image, referenceImages",
        ),
    ],
)
def test_a_bad_image_input_is_refused_before_anything_is_sent(
    write: Write, tmp_path: Path, change: Callable[[Path], object], message: str
) -> None:
    sketches(tmp_path)
    write("jobs.yaml", MANIFEST)
    change(tmp_path)
    world = World(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        world.run(tmp_path / "jobs.yaml")
    assert caught.value.exit_code == 2
    assert not world.sim.uploads and world.sim.jobs_created == 0


def test_unit_ids_follow_the_images_content_not_their_place(write: Write, tmp_path: Path) -> None:
    sketches(tmp_path)
    before = {u.id for u in iter_units(load_manifest(write("jobs.yaml", MANIFEST)))}
    shutil.move(tmp_path / "sketches", tmp_path / "moved")
    moved = write("jobs.yaml", MANIFEST.replace("sketches/*.png", "moved/*.png"))
    assert {u.id for u in iter_units(load_manifest(moved))} == before
    (tmp_path / "moved" / "s0.png").write_bytes(make_png(32, 32, "redrawn"))
    after = {u.id for u in iter_units(load_manifest(moved))}
    assert len(after & before) == 4 and len(after) == 6  # the redrawn sketch's two are new


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_pairs_load_with_the_real_loader(write: Write, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[dataset-test]'")
    pytest.importorskip("PIL")
    sketches(tmp_path)
    world = World(tmp_path)
    world.run(write("jobs.yaml", MANIFEST))
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(world.out), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded) == 6
    row = loaded[0]
    assert row["image"].size == (64, 64) and row["input_image"].size == (32, 32)
    assert [image.size for image in row["referenceImages"]] == [(16, 16), (16, 16)]
    # And the clean copy that export makes holds the pairs too.
    import batchgen

    batchgen.export(world.out, tmp_path / "clean", "imagefolder")
    exported = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "clean"), split="train",
        cache_dir=str(tmp_path / "hf2"),
    )  # fmt: skip
    assert exported[0]["input_image"].size == (32, 32)


def test_shards_of_one_output_upload_each_file_once(write: Write, tmp_path: Path) -> None:
    sketches(tmp_path, count=4)
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    reports = [world.run(manifest, shard=shard) for shard in ("1/2", "2/2")]
    assert sum(r.succeeded for r in reports) == 8
    assert len(world.sim.uploads) == 4 + 2  # the second shard borrowed the first's assets
    assert reports[0].uploaded > 0 and "input images uploaded" in reports[0].line


def test_a_prompts_file_names_each_prompts_image(write: Write, tmp_path: Path) -> None:
    sketches(tmp_path, count=2)
    write("p.csv", "prompt,sketch\nred,sketches/s0.png\nblue,sketches/s1.png\n")
    manifest = write(
        "jobs.yaml",
        "model: model_sim-img2img\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompts_file: p.csv, inputs: {image: {column: sketch}}}\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).succeeded == 2
    by_prompt = {r["prompt"]: r["inputs"]["image"][0]["path"] for r in world.results()}
    assert {p: Path(f).name for p, f in by_prompt.items()} == {"red": "s0.png", "blue": "s1.png"}
    write("p.csv", "prompt,sketch\ngreen,sketches/missing.png\n")
    with pytest.raises(ConfigError, match=r"p.csv:2: sketch: file not found"):
        World(tmp_path / "other").run(manifest)


def test_images_given_by_url_are_fetched_once_and_recorded_by_their_address(
    write: Write, tmp_path: Path
) -> None:
    import base64

    from batchgen.sim.records import SimRequest

    world = World(tmp_path)
    headers = {"Authorization": world.sim._expected_auth.decode()}
    urls = []
    for n in range(2):
        body = {"name": f"hosted-{n}.png", "image": base64.b64encode(make_png(24, 24, f"h{n}"))}
        body["image"] = body["image"].decode()  # type: ignore[union-attr]
        request = SimRequest("POST", "/v1/assets", {}, headers, json.dumps(body).encode())
        urls.append(world.sim.handle(request).payload["asset"]["url"])
    manifest = write(
        "jobs.yaml",
        "model: model_sim-img2img\nwidth: 64\nheight: 64\njobs:\n"
        f"  - images: [{urls[0]!r}, {urls[1]!r}]\n    prompt: ink\n",
    )
    assert world.run(manifest).succeeded == 2
    fetched = world.sim.requests["GET cdn"]
    recorded = {r["inputs"]["image"][0]["path"] for r in world.results()}
    assert recorded == set(urls)
    # A second run, elsewhere: the copies in the cache are used, not fetched again.
    World(tmp_path / "again").run(manifest)
    assert world.sim.requests["GET cdn"] == fetched
    bad = write("bad.yaml", MANIFEST_URL_BAD)
    with pytest.raises(ConfigError, match=r"bad.yaml:5: jobs\[0\].images: .*403"):
        world.run(bad)


MANIFEST_URL_BAD = """\
model: model_sim-img2img
width: 64
height: 64
jobs:
  - images: http://cdn.sim/asset_none.png?Expires=1&Signature=x
    prompt: ink
"""


def test_a_rebuilt_journal_finds_the_jobs_of_units_that_send_images(
    write: Write, tmp_path: Path
) -> None:
    sketches(tmp_path, count=2)
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=20)
    world.run(manifest, max_runtime=5)  # every job made, none finished
    made = world.sim.jobs_created
    assert made == 4
    (world.out / "journal.sqlite3").unlink()
    (world.out / "results.jsonl").unlink(missing_ok=True)
    world.clock.jump(30)
    rebuilt = world.run(manifest, rebuild_journal=True)
    assert rebuilt.exit_code == 0 and world.sim.jobs_created == made  # found, not bought
