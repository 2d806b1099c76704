"""A model's inputs and a body checked against them: the table the pre-flight check uses."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.errors import MalformedResponseError
from batchgen.scenario.inputs import ModelSpec, missing, model_from_json, parse_model, problems

MODEL = {
    "model": {
        "id": "model_x",
        "name": "X",
        "privacy": "public",
        "inputs": [
            {"name": "prompt", "type": "string", "maxLength": 10, "required": {"always": True}},
            {"name": "width", "type": "number", "min": 256, "max": 2048, "step": 16},
            {"name": "height", "type": "number", "min": 256, "max": 2048, "step": 16},
            {"name": "guidance", "type": "number", "min": 0, "max": 10, "step": 0.1},
            {"name": "style", "type": "string", "allowedValues": ["oil", "ink"]},
            {"name": "tiled", "type": "boolean"},
            {"name": "loras", "type": "string_array", "maxLength": 2},
            {"name": "weights", "type": "number_array"},
            {"name": "image", "type": "file", "kind": "image"},
            {"name": "mask", "type": "file", "required": {"ifDefined": {"image": "needs a mask"}}},
            {"name": "strength", "type": "number",
             "required": {"conditional": {"values": {"style": ["ink"]}}}},
            {"name": "cfg", "type": "number", "required": {"ifNotDefined": {"guidance": "or"}}},
        ],
    }
}  # fmt: skip
SPEC = parse_model(MODEL)
GOOD = {"prompt": "a cat", "width": 512, "height": 512, "guidance": 3.5}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({}, None, None),
        ({"guidanse": 3}, "guidanse", "did you mean 'guidance'"),
        ({"width": 500}, "width", "multiple of 16 from 256"),
        ({"width": 128}, "width", "at least 256"),
        ({"width": 4096}, "width", "at most 2048"),
        ({"width": "512"}, "width", "must be a number, got the string"),
        ({"width": True}, "width", "must be a number, got a boolean"),
        ({"guidance": 0.30000000000000004}, None, None),  # 0.1 + 0.2: a step still
        ({"guidance": 0.35}, "guidance", "multiple of 0.1"),
        ({"prompt": "x" * 11}, "prompt", "at most 10 characters, has 11"),
        ({"style": "watercolour"}, "style", 'one of "oil", "ink"'),
        ({"tiled": "yes"}, "tiled", "true or false"),
        ({"loras": ["a", "b", "c"]}, "loras", "at most 2 items, has 3"),
        ({"loras": "a"}, "loras", "must be a list"),
        ({"weights": [1, "2"]}, "weights", "item 1: must be a number"),
    ],
)
def test_a_body_is_checked_field_by_field(
    change: dict[str, Any], field: str | None, message: str | None
) -> None:
    found = problems(SPEC, {**GOOD, **change})
    if field is None:
        assert found == []
    else:
        ((name, text),) = found
        assert name == field and message is not None and message in text


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ({"width": 512, "guidance": 1}, ["prompt"]),
        ({"prompt": "p"}, ["cfg"]),  # cfg when guidance is not given
        ({"prompt": "p", "guidance": 1, "image": "asset_1"}, ["mask"]),
        ({"prompt": "p", "guidance": 1, "style": "ink"}, ["strength"]),
        ({"prompt": "p", "guidance": 1, "style": "oil"}, []),
    ],
)
def test_required_inputs_always_or_depending_on_others(
    body: dict[str, Any], wanted: list[str]
) -> None:
    assert [name for name, _ in missing(SPEC, body)] == wanted


def test_size_forms_say_how_a_model_is_told_a_size() -> None:
    assert SPEC.size_forms == ("width/height",)
    ratio = parse_model({"id": "m", "inputs": [{"name": "aspectRatio", "type": "string"}]})
    assert ratio.size_forms == ("aspectRatio",)
    assert ModelSpec("bare").size_forms == ()


def test_a_spec_survives_the_round_trip_through_the_journal() -> None:
    again = model_from_json(SPEC.to_json())
    assert again == SPEC


@pytest.mark.parametrize(
    "payload",
    [None, {"model": {"name": "no id"}}, {"model": {"id": "m", "inputs": [{"type": "string"}]}},
     {"model": {"id": "m", "inputs": {"prompt": {}}}}],
)  # fmt: skip
def test_a_model_answer_that_cannot_be_read_is_malformed(payload: Any) -> None:
    with pytest.raises(MalformedResponseError):
        parse_model(payload)
