from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest import iter_units, load_manifest
from batchgen.manifest.shard import Shard
from batchgen.sim import Simulator
from tests.test_end_to_end import read_results, run_cli

MANIFEST = (
    "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    "  - prompt: 'p{n}'\n    vars: {n: [" + ", ".join(map(str, range(60))) + "]}\n"
    "  - prompt: same\n    count: 12\n"
)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 100])
def test_shards_partition_the_units(write: Callable[[str, str], Path], count: int) -> None:
    units = [u.id for u in iter_units(load_manifest(write("m.yaml", MANIFEST)))]
    shards = [[u for u in units if Shard(i, count).holds(u)] for i in range(1, count + 1)]
    assert sorted(u for shard in shards for u in shard) == sorted(units)  # union, no overlap
    if count <= 3:
        assert all(len(shard) > len(units) / count / 2 for shard in shards)  # roughly even


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "2", "1/2/3", ""])
def test_bad_shards_are_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(text)
    assert main(["run", "m.yaml", "--shard", text]) == 2
    assert "--shard" in capsys.readouterr().err


def test_two_shards_run_apart_make_exactly_the_whole_set(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    everything = {u.id for u in iter_units(load_manifest(manifest))}
    sim = start_simulator()
    root = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert run_cli(sim, manifest, root, "--shard", shard, "--poll-interval", "0.02") == 0
    first = {r["id"] for r in read_results(root / "shard-1-of-2")}
    second = {r["id"] for r in read_results(root / "shard-2-of-2")}
    assert first and second and not first & second
    assert first | second == everything
    assert sim.jobs_created == len(everything)

    capsys.readouterr()
    assert main(["status", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == ["shard-1-of-2", "shard-2-of-2"]
    assert report["states"] == {"downloaded": len(everything)}
