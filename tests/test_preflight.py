"""Every unit of a manifest against its model's inputs, with no server: the pure check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.manifest import load_manifest
from batchgen.scenario.inputs import parse_model
from batchgen.scenario.preflight import PROBLEMS_SHOWN, ModelInputsError, check_manifest

Write = Callable[[str, str], Path]

PROMPT = {"name": "prompt", "type": "string", "maxLength": 20, "required": {"always": True}}
SIDES = [
    {"name": side, "type": "number", "min": 64, "max": 1024, "step": 16,
     "required": {"always": True}}
    for side in ("width", "height")
]  # fmt: skip
SPECS = {
    "model_wh": parse_model(
        {"id": "model_wh", "inputs": [PROMPT, *SIDES, {"name": "seed", "type": "number"}]}
    ),
    "model_small_seed": parse_model(
        {
            "id": "model_small_seed",
            "inputs": [PROMPT, {"name": "seed", "type": "number", "min": 0, "max": 65535}],
        }
    ),  # fmt: skip
    "model_noseed": parse_model({"id": "model_noseed", "inputs": [PROMPT]}),
}


def problems_of(write: Write, text: str) -> list[str]:
    path = write("jobs.yaml", text)
    with pytest.raises(ModelInputsError) as caught:
        check_manifest(load_manifest(path), SPECS)
    return [str(problem).removeprefix(f"{path}:") for problem in caught.value.problems]


def test_a_clean_manifest_counts_its_units(write: Write) -> None:
    write("p.txt", "one\ntwo\nthree\n")
    path = write(
        "jobs.yaml",
        "model: model_wh\nwidth: 512\nheight: 512\njobs:\n"
        "  - {prompts_file: p.txt, count: 2, params: {seed: per-unit}}\n"
        "  - {prompt: a, sizes: [[64, 64], [1024, 512]]}\n",
    )
    assert check_manifest(load_manifest(path), SPECS) == 3 * 2 + 2


def test_seeds_drawn_per_unit_must_fit_the_models_range(write: Write) -> None:
    found = problems_of(
        write,
        "jobs:\n  - {prompt: a, model: model_small_seed, params: {seed: per-unit}}\n"
        "  - {prompt: b, model: model_noseed, params: {seed: per-unit}}\n",
    )
    assert found[0].startswith("2: jobs[0].params.seed: 'per-unit' draws seeds from 0 to ")
    assert "give a fixed seed" in found[0]
    assert found[1].startswith("3: jobs[1].params.seed: model_noseed takes no input 'seed'")
    assert len(found) == 2


def test_a_size_the_model_requires_and_was_not_given(write: Write) -> None:
    found = problems_of(write, "model: model_wh\njobs:\n  - prompt: a\n")
    assert found == [
        f"3: jobs[0]: model_wh requires {side}; give width and height"
        for side in ("width", "height")
    ]


def test_the_same_problem_in_every_size_and_prompt_is_told_once_each_place(
    write: Write,
) -> None:
    write("p.txt", "".join(f"prompt {i} {'x' * 20}\n" for i in range(30)))
    found = problems_of(
        write,
        "model: model_wh\njobs:\n"
        "  - {prompts_file: p.txt, sizes: [[512, 512], [256, 256]], params: {steps: 3}}\n",
    )
    assert found[0].startswith("3: jobs[0].params.steps: model_wh takes no input 'steps'")
    # Each over-long prompt at its own line of the prompts file.
    assert sum("prompt: must have at most 20 characters" in line for line in found) == 30
    assert len(found) == 31


def test_many_problems_are_shown_up_to_a_bound_and_counted(write: Write) -> None:
    write("p.txt", "x" * 21 + "\n" * 1 + ("y" * 21 + "\n") * 40)
    path = write("jobs.yaml", "model: model_noseed\njobs:\n  - prompts_file: p.txt\n")
    with pytest.raises(ModelInputsError) as caught:
        check_manifest(load_manifest(path), SPECS)
    lines = str(caught.value).splitlines()
    assert len(lines) == PROBLEMS_SHOWN + 2
    assert lines[-2] == f"... and {41 - PROBLEMS_SHOWN} more"
    assert lines[-1].startswith("41 problems with the models' inputs; nothing was sent")
