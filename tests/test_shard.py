from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest import iter_units, load_manifest
from batchgen.manifest.shard import Shard

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
