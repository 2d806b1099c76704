"""batchgen gallery: the page's data and thumbnails, and the page itself driven in a
real headless Chromium (the slow suite; .ci/run installs Chromium and Playwright)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import batchgen
from batchgen.store.gallery import thumbnail_work
from tests.helpers import World, every_verdict, quality_manifest

Write = Callable[[str, str], Path]

MANIFEST = """\
model: model_sim-fast
jobs:
  - prompt: "a {animal} reading"
    vars: {animal: [cat, fox, owl]}
    sizes: [[64, 64], [96, 48]]
  - {prompt: a lighthouse, width: 64, height: 64, count: 2}
  - {prompt: something forbidden, width: 64, height: 64}
"""


@pytest.fixture
def run(write: Write, tmp_path: Path) -> World:
    world = World(tmp_path)
    assert world.run(write("jobs.yaml", MANIFEST)).exit_code == 1  # one refused
    return world


def page_data(page: Path) -> dict[str, object]:
    found = re.search(
        r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S
    )
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_the_page_holds_every_unit_and_a_thumbnail_of_each_image(run: World) -> None:
    made = batchgen.gallery(run.out)
    try:
        import PIL  # noqa: F401 - the thumbnails need it (the dataset extra)

        thumbnails = 8
    except ImportError:
        thumbnails = 0  # the page shows the images themselves
    assert (made.units, made.images, made.thumbnails_made) == (9, 8, thumbnails)
    page = Path(made.page)
    data = page_data(page)
    units = data["units"]
    assert isinstance(units, list)
    refused = [u for u in units if u["status"] == "failure"]
    assert len(refused) == 1 and "moderation" in refused[0]["error"] and refused[0]["permanent"]
    for unit in units:
        for image in unit["images"]:
            assert (page.parent / image["thumb"]).is_file()
            assert (page.parent / image["file"]).resolve().is_file()
    # No server, no network: nothing is fetched from anywhere but beside the page.
    assert not re.search(r"""(src|href)=["']?https?:""", page.read_text())
    # Made again with nothing new: no thumbnail made twice.
    assert batchgen.gallery(run.out).thumbnails_made == 0


@pytest.mark.parametrize(
    ("wanted", "present", "make", "stale"),
    [
        ({"a_0_11.webp": "images/a.png"}, set(), ["a_0_11.webp"], []),
        ({"a_0_11.webp": "images/a.png"}, {"a_0_11.webp"}, [], []),
        # The image was made again (other bytes): a thumbnail of its own, the old one gone.
        ({"a_0_22.webp": "images/a.png"}, {"a_0_11.webp"}, ["a_0_22.webp"], ["a_0_11.webp"]),
        # A file of another kind in thumbs/ is not the gallery's to remove.
        ({}, {"notes.txt", "a_0.webp"}, [], ["a_0.webp"]),
    ],
)
def test_the_names_there_say_which_thumbnails_to_make_and_remove(
    wanted: dict[str, str], present: set[str], make: list[str], stale: list[str]
) -> None:
    assert thumbnail_work(wanted, present) == (make, stale)


def test_a_thumbnail_no_image_wants_is_removed_and_each_is_named_by_its_image(
    run: World,
) -> None:
    pytest.importorskip("PIL", reason="the thumbnails need Pillow (the dataset extra)")
    thumbs = run.out / "gallery" / "thumbs"
    thumbs.mkdir(parents=True)
    (thumbs / "gone_0.webp").write_bytes(b"a thumbnail of an earlier version")
    (thumbs / "notes.txt").write_text("the user's")
    batchgen.gallery(run.out)
    names = set(os.listdir(thumbs))
    assert "gone_0.webp" not in names and "notes.txt" in names
    expected = {
        f"{r['id']}_{index}_{digest[:16]}.webp"
        for r in run.results()
        for index, digest in enumerate(r.get("sha256") or [])
    }
    assert names - {"notes.txt"} == expected and len(expected) == 8


def browser() -> tuple[object, str]:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    return playwright, chromium


@pytest.mark.slow
def test_the_page_in_a_real_browser_offline(run: World, tmp_path: Path) -> None:
    playwright, chromium = browser()
    page_path = Path(batchgen.gallery(run.out).page)
    artifacts = Path(os.environ.get("BATCHGEN_TEST_ARTIFACTS", tmp_path))
    with playwright.sync_playwright() as driver:  # type: ignore[attr-defined]
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = launched.new_context(offline=True)  # the network is off
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            widths = page.evaluate(
                "[...document.querySelectorAll('#grid img')].map(i => i.naturalWidth)"
            )
            assert len(widths) == 8 and min(widths) > 0  # every thumbnail renders
            failed = page.locator(".card.failed")
            assert failed.count() == 1 and "moderation" in failed.inner_text()
            assert "(for good)" in failed.inner_text()
            page.fill("#q", "fox")
            assert page.locator("#grid .card").count() == 2  # two sizes of the fox
            assert all("fox" in t for t in page.locator("#grid .card .prompt").all_inner_texts())
            page.fill("#q", "")
            page.click("#show-compare")
            rows = page.locator("#compare tr")
            assert rows.count() == 1 + 4  # a header, and a row for each prompt made
            page.locator("#compare img").first.click()
            assert page.locator("#modal.open").count() == 1
            page.screenshot(path=str(artifacts / "gallery-modal.png"), full_page=True)
            assert errors == []
        finally:
            launched.close()


def test_a_run_refreshes_its_gallery_and_a_sharded_output_has_one(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    for shard in ("1/2", "2/2"):
        world.run(manifest, shard=shard, gallery=True)
    page = world.out / "gallery" / "index.html"
    assert not list(world.out.glob("shard-*/gallery"))
    units = page_data(page)["units"]
    assert isinstance(units, list) and len(units) == 9  # both shards' units, one page


@pytest.mark.slow
def test_a_gallery_of_ten_thousand_images_stays_bounded_in_the_browser(tmp_path: Path) -> None:
    """The page of a 10,000-image run: a bounded number of elements, the first page's
    thumbnails rendered, a filter and a page turn answered."""
    import hashlib

    from batchgen.manifest import iter_units, load_manifest
    from batchgen.sim.png import make_png
    from batchgen.store.files import stamp_of
    from batchgen.store.journal import Journal
    from batchgen.store.results import UnitResult

    playwright, chromium = browser()
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"item {n}\n" for n in range(10_000)))
    manifest = tmp_path / "m.yaml"
    manifest.write_text("model: m\nwidth: 32\nheight: 32\njobs:\n  - prompts_file: p.txt\n")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    journal = Journal(out)
    try:
        with journal.batch():
            for unit in iter_units(load_manifest(manifest)):
                content = make_png(32, 32, unit.id)
                relative = f"images/{unit.id}_0.png"
                (out / relative).write_bytes(content)
                files = [(relative, hashlib.sha256(content).hexdigest())]
                journal.submitting(unit.id, "2027-01-15T08:00:00+00:00", '["m", {}]')
                journal.submitted(unit.id, f"job-{unit.id}", 1.0)
                result = UnitResult.success(unit, job_id=f"job-{unit.id}", files=files, cost=1.0)
                journal.downloaded(unit.id, files, result.to_json(), [stamp_of(out / relative)])
    finally:
        journal.close()
    page_path = Path(batchgen.gallery(out).page)
    with playwright.sync_playwright() as driver:  # type: ignore[attr-defined]
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = launched.new_context(offline=True).new_page()
            page.goto(page_path.as_uri())
            assert page.locator("#grid .card").count() == 200  # a page, not 10,000
            page.wait_for_function(
                "() => [...document.querySelectorAll('#grid img')].slice(0, 20)"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert "of 50" in page.inner_text("#where")
            page.click("#next")
            assert "page 2 of 50" in page.inner_text("#where")
            page.fill("#q", "item 9999")
            assert page.locator("#grid .card").count() == 1
        finally:
            launched.close()


@pytest.fixture
def gated(write: Write, tmp_path: Path) -> World:
    """80 units at high sensitivity (a third fails, a fifth warns): none of one kind is
    a chance of 0.8 ** 80, about one in fifty million."""
    manifest = quality_manifest(80, "{on_fail: keep, sensitivity: high}")
    return every_verdict(World(tmp_path), write("jobs.yaml", manifest))


def test_the_page_carries_each_units_verdict_and_reasons(gated: World) -> None:
    data = page_data(Path(batchgen.gallery(gated.out).page))
    by_id = {r["id"]: r for r in gated.results()}
    units = data["units"]
    assert isinstance(units, list) and len(units) == 80
    for unit in units:
        record = by_id[unit["id"]]
        assert (unit["verdict"], unit["score"], unit["reasons"]) == (
            record["quality_verdict"],
            record["quality_score"],
            record["quality_reasons"],
        )
    kept = [r["quality_verdict"] for r in by_id.values()]
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["verdicts"] == {v: kept.count(v) for v in set(kept)}


@pytest.mark.slow
def test_the_gallery_filters_by_verdict_and_shows_the_reasons_in_a_browser(
    gated: World, tmp_path: Path
) -> None:
    """Also the README's picture: BATCHGEN_TEST_ARTIFACTS=docs/images writes it."""
    playwright, chromium = browser()
    artifacts = Path(os.environ.get("BATCHGEN_TEST_ARTIFACTS", tmp_path))
    page_path = Path(batchgen.gallery(gated.out).page)
    kept = [r["quality_verdict"] for r in gated.results()]
    with playwright.sync_playwright() as driver:  # type: ignore[attr-defined]
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = launched.new_context(offline=True).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            assert page.locator("#grid .card").count() == 80
            assert f"{kept.count('fail')} failed" in page.inner_text("#totals")
            for verdict in ("pass", "warn", "fail"):
                page.select_option("#verdict", verdict)
                cards = page.locator("#grid .card")
                assert cards.count() == kept.count(verdict)
                shown = page.locator("#grid .card .verdict").all_inner_texts()
                assert all(text.startswith(f"{verdict} · score") for text in shown)
            page.select_option("#verdict", "fail")
            reasons = page.locator("#grid .card .reasons").all_inner_texts()
            assert len(reasons) == kept.count("fail") and "anatomy" in reasons[0]
            page.select_option("#verdict", "")
            assert page.locator("#grid .card").count() == 80
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            page.screenshot(path=str(artifacts / "gallery.png"))
            assert errors == []
        finally:
            launched.close()


def test_a_gallery_that_cannot_be_made_does_not_fail_the_run_that_did_its_work(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path)
    world.out.mkdir()
    (world.out / "gallery").write_text("a file where the gallery's folder would be")
    report = world.run(
        write("jobs.yaml", "model: model_sim-fast\njobs: [{prompt: a kite}]\n"), gallery=True
    )
    assert report.exit_code == 0 and report.succeeded == 1
    assert "the gallery was not made" in caplog.text
    assert (world.out / "gallery").read_text().startswith("a file")
