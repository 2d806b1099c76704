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


@pytest.mark.parametrize(
    ("environ", "shards", "expected"),
    [
        ({"JOB_COMPLETION_INDEX": "0"}, 4, "1/4"),
        ({"JOB_COMPLETION_INDEX": "3"}, 4, "4/4"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, None, "2/8"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "8",
            },
            None,
            "5/8",
        ),
    ],
)
def test_shard_auto_reads_the_task_from_kubernetes_or_slurm(
    environ: dict[str, str], shards: int | None, expected: str
) -> None:
    assert Shard.from_environment(environ, shards) == Shard.parse(expected)


@pytest.mark.parametrize(
    ("environ", "shards", "message"),
    [
        ({}, None, "neither JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "2"}, None, "needs --shards N"),
        ({"JOB_COMPLETION_INDEX": "4"}, 4, "1 <= I <= N"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, None, "whole numbers"),
    ],
)
def test_shard_auto_says_what_is_missing(
    environ: dict[str, str], shards: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Shard.from_environment(environ, shards)
