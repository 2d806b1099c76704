"""A hostile file system: links, FIFOs and odd paths where batchgen writes.

Each attack of the adversarial sweep (issue 33), reproduced against the simulator: a
link at the lock, at ``images/`` or a folder below it, at the journal; a FIFO or a link
to ``/dev/zero`` at an image's name; ``--fresh`` on a directory that is not batchgen's;
a manifest whose ``output:`` climbs out of its folder.  Each is refused in one line
(or bounded), nothing outside the output is touched, and nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import batchgen
from batchgen.cli import main
from batchgen.errors import ConfigError, StorageError
from batchgen.store.files import NotRegularFile, real_directory
from batchgen.store.journal import JOURNAL_NAME
from batchgen.store.lock import LOCK_NAME, OutputLock
from tests.helpers import World

Write = Callable[[str, str], Path]

MANIFEST = "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 3}\n"


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_link_at_the_lock_is_refused_and_its_target_kept(write: Write, tmp_path: Path) -> None:
    victim = tmp_path / "v.txt"
    victim.write_text("DATA\n")
    out = tmp_path / "s1"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    world = World(tmp_path)
    with pytest.raises(StorageError) as caught:
        world.run(write("m.yaml", MANIFEST), out=out)
    assert "symbolic link" in one_line(caught.value) and LOCK_NAME in str(caught.value)
    assert victim.read_text() == "DATA\n" and world.sim.jobs_created == 0


def test_a_fifo_at_the_lock_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / LOCK_NAME)
    with pytest.raises(StorageError, match="regular files"):
        with OutputLock(tmp_path):
            pass


@pytest.mark.parametrize("linked", ["images", "images/grp"])
def test_images_written_only_in_the_outputs_own_folders(
    write: Write, tmp_path: Path, linked: str
) -> None:
    """``images/`` or a folder of the file name template, a link to elsewhere: refused,
    and the clean-up of leftover part files never reaches into the link's target."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = elsewhere / ".precious.part"
    keep.write_text("not batchgen's")
    out = tmp_path / "out"
    (out / linked).parent.mkdir(parents=True)
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    manifest = write("m.yaml", MANIFEST.replace("jobs:", "filename: 'grp/{index}'\njobs:"))
    world = World(tmp_path)
    with pytest.raises(StorageError) as caught:
        world.run(manifest, out=out)
    assert "not a directory of the output's own" in one_line(caught.value)
    assert sorted(p.name for p in elsewhere.iterdir()) == [".precious.part"]
    assert keep.read_text() == "not batchgen's"


@pytest.mark.parametrize("planted", ["fifo", "dev-zero"])
def test_a_fifo_or_device_at_an_images_name_is_refused_not_read(
    write: Write, tmp_path: Path, planted: str
) -> None:
    """A FIFO, or a link to /dev/zero, at the name an image is to take: reading it would
    never end.  The run stops in one line; nothing is lost, and once it is moved away
    the next run finishes without paying again."""
    out = tmp_path / "out"
    text = MANIFEST.replace("jobs:", "filename: '{index}'\njobs:")
    world = World(tmp_path)
    assert world.run(write("m.yaml", text.replace("count: 3", "count: 1")), out=out).exit_code == 0
    manifest = write("m.yaml", text)
    target = out / "images" / "2.png"
    if planted == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    with pytest.raises(StorageError) as caught:
        world.run(manifest, out=out)
    assert "regular files" in one_line(caught.value)
    target.unlink()
    assert world.run(manifest, out=out).exit_code == 0
    assert world.sim.jobs_created == 3


def test_a_link_at_the_journal_is_refused(write: Write, tmp_path: Path) -> None:
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).symlink_to(victim)
    with pytest.raises(StorageError, match="regular files"):
        World(tmp_path).run(write("m.yaml", MANIFEST), out=out)
    assert victim.read_bytes() == b"precious"


def test_real_directory_makes_folders_and_refuses_links_and_files(tmp_path: Path) -> None:
    assert real_directory(tmp_path, "a/b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    for wrong in ("file/c", "link/c", "a/b/../../link"):
        with pytest.raises(NotRegularFile):
            real_directory(tmp_path, wrong)
    assert not (tmp_path / "a" / "c").exists()


def test_fresh_moves_aside_only_a_directory_of_batchgens(write: Write, tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "thesis.txt").write_text("years of work")
    manifest = write("m.yaml", MANIFEST)
    world = World(tmp_path)
    with pytest.raises(ConfigError, match="holds no batchgen journal") as caught:
        world.run(manifest, out=decoy, fresh=True)
    one_line(caught.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("decoy")] == ["decoy"]
    assert (decoy / "thesis.txt").read_text() == "years of work"
    # An output of batchgen's is moved aside, kept whole.
    out = tmp_path / "out"
    assert world.run(manifest, out=out).exit_code == 0
    assert world.run(manifest, out=out, fresh=True).exit_code == 0
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("out.")]) == 1


def test_fresh_on_the_current_directory_is_one_line(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("m.yaml", MANIFEST)
    out = tmp_path / "here"
    world = World(tmp_path)
    assert world.run(manifest, out=out).exit_code == 0
    monkeypatch.chdir(out)
    with pytest.raises(ConfigError, match="current directory") as caught:
        world.run(manifest, out=Path("."), fresh=True)
    one_line(caught.value)
    assert (out / JOURNAL_NAME).is_file()


@pytest.mark.parametrize("written", ["/etc", "../elsewhere", "sub/../../up"])
def test_a_manifests_output_stays_below_its_folder_unless_out_is_given(
    write: Write, tmp_path: Path, written: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write("m/jobs.yaml", f"output: {written}\n" + MANIFEST)
    world = World(tmp_path)
    with pytest.raises(ConfigError) as caught:
        world.run(manifest, out=None)
    said = one_line(caught.value)
    assert f"{manifest}:1: output:" in said and "--out" in said
    assert world.sim.jobs_created == 0
    # The command line says where, and is obeyed.
    assert world.run(manifest, out=tmp_path / "chosen").exit_code == 0
    code = main(["validate", str(manifest), "--offline"])
    assert code in (0, 2)  # validate reads no output


def test_a_relative_output_is_below_the_manifests_folder(write: Write, tmp_path: Path) -> None:
    manifest = write("m/jobs.yaml", "output: results/night\n" + MANIFEST)
    world = World(tmp_path)
    assert world.run(manifest, out=None).exit_code == 0
    assert (tmp_path / "m" / "results" / "night" / JOURNAL_NAME).is_file()
    assert batchgen.status(tmp_path / "m" / "results" / "night").states == {"downloaded": 3}
