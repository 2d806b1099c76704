from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.errors import ManifestError
from batchgen.manifest import (
    Size,
    canonical_request,
    count_units,
    iter_units,
    load_manifest,
    unit_id,
)

Write = Callable[[str, str], Path]

BASE = "model: m1\nwidth: 512\nheight: 512\n"


BAD_MANIFESTS = [
    (BASE + "jobs:\n  - prompt: [unclosed\n", 6, "yaml", "flow sequence begun on line 5"),
    (BASE + "jobs:\n  - prompt: a\n   x: : y\n", 6, "yaml", ""),
    (BASE + "jobs:\n  - promt: a cat\n", 5, "jobs[0].promt", "did you mean 'prompt'"),
    (BASE + "colour: red\njobs:\n  - prompt: a\n", 4, "colour", "unknown key"),
    (BASE + "jobs:\n  - prompt: a\n    width: 1000\n", 6, "jobs[0].width", "multiple of 16"),
    (BASE + "jobs:\n  - prompt: a\n    width: -16\n", 6, "jobs[0].width", "multiple of 16"),
    (BASE + "jobs:\n  - prompt: a\n    height: '512'\n", 6, "jobs[0].height", "whole number"),
    (BASE + "jobs:\n  - prompt: a\n    width: true\n", 6, "jobs[0].width", "whole number"),
    (BASE + "jobs:\n  - prompt: '   '\n", 5, "jobs[0].prompt", "empty"),
    (BASE + "jobs:\n  - prompt: 12\n", 5, "jobs[0].prompt", "must be a string"),
    # A placeholder with no vars would send "a {animal}" to a paid API as it is.
    (
        BASE + "jobs:\n  - prompt: 'a {animal}'\n",
        5,
        "jobs[0].prompt",
        "placeholder {animal} has no entry in vars (did you mean to give vars:?",
    ),
    (BASE + "jobs:\n  - prompts_file: nowhere.txt\n", 5, "jobs[0].prompts_file", "not found"),
    (BASE + "jobs:\n  - prompts_file: p.docx\n", 5, "jobs[0].prompts_file", "must end in"),
    (
        BASE + "jobs:\n  - {id: a, prompt: x}\n  - {id: a, prompt: y}\n",
        6,
        "jobs[1].id",
        "duplicate",
    ),
    (BASE + "jobs:\n  - prompt: a\n    count: 0\n", 6, "jobs[0].count", "between"),
    (BASE + "jobs:\n  - prompt: a\n    prompts_file: x.txt\n", 5, "jobs[0]", "exactly one"),
    (
        BASE + "jobs:\n  - prompt: a\n    params: {width: 16}\n",
        6,
        "jobs[0].params.width",
        "own field",
    ),
    (
        BASE + "jobs:\n  - prompt: a\n    params: {when: 2024-01-01}\n",
        6,
        "jobs[0].params.when",
        "JSON",
    ),
    (
        BASE + "jobs:\n  - prompt: 'a {x} {z}'\n    vars: {x: [1]}\n",
        5,
        "jobs[0].prompt",
        "{z} has no",
    ),
    (
        BASE + "jobs:\n  - prompt: 'a {x}'\n    vars: {x: [1], y: [2]}\n",
        6,
        "jobs[0].vars.y",
        "not used",
    ),
    (
        BASE + "jobs:\n  - prompt: a\n    sizes: [[512]]\n",
        6,
        "jobs[0].sizes[0]",
        "[width, height]",
    ),
    (BASE + "jobs:\n  - prompt: a\n    sizes: [[512, 500]]\n", 6, "jobs[0].sizes[0][1]", "16"),
    (BASE + "jobs: []\n", 4, "jobs", "at least one"),
    (
        BASE + "jobs:\n  - prompt: a\n  - prompt: b\n    model: m\n    model: n\n",
        8,
        "jobs[1].model",
        "twice",
    ),
    ("width: 512\nheight: 512\njobs:\n  - prompt: a\n", 4, "jobs[0].model", "no model"),
    (BASE + "concurrency: 0\njobs:\n  - prompt: a\n", 4, "concurrency", "between"),
    ("- just\n- a list\n", 1, "", "must be a mapping"),
    (BASE + "filename: '../{id}'\njobs:\n  - prompt: a\n", 4, "filename", "'..' path part"),
    (BASE + "filename: '{slug}'\njobs:\n  - prompt: a\n", 4, "filename", "{id} or {index}"),
    (BASE + "filename: 7\njobs:\n  - prompt: a\n", 4, "filename", "must be a string"),
    # Hostile input is refused before it is built (issue 13's table).
    (BASE + "filename: '{index:0999999999d}'\njobs:\n  - prompt: a\n", 4, "filename", "width"),
    (BASE + "params: {x: " + "[" * 40 + "]" * 40 + "}\njobs:\n  - prompt: a\n", 4, "yaml", "deep"),
    (
        BASE + "jobs:\n  - prompt: a\n    params: {x: " + "9" * 5000 + "}\n",
        6,
        "jobs[0].params.x",
        "long",
    ),
    (
        BASE + "jobs:\n  - prompt: a\n    params: {x: " + "9" * 30 + "}\n",
        6,
        "jobs[0].params.x",
        "within",
    ),
    (BASE + "params:\n  a: &a [1, *a]\njobs:\n  - prompt: a\n", 5, "yaml", "refers to itself"),
    (
        # A "billion laughs": each alias repeats ten of the one before.
        BASE
        + "params:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
        + "jobs:\n  - prompt: a\n",
        10,
        "yaml",
        "more than 1,000,000 values",
    ),
    (
        BASE
        + "jobs:\n  - prompt: a\n  - prompt: '{a}{b}{c}'\n    vars:\n"
        + "".join(f"      {v}: [{', '.join(map(str, range(1000)))}]\n" for v in "abc"),
        6,
        "jobs[1]",
        "more than 10,000,000 units",
    ),
    # A template's column must be in every prompt's vars (or prompt file columns).
    (
        BASE + "filename: '{x}/{id}'\njobs:\n  - {prompt: 'a {x}', vars: {x: [1]}}\n"
        "  - prompt: b\n",
        7,
        "x",
        "not among this prompt's vars",
    ),
]


def units_of(write: Write, text: str) -> list:
    return list(iter_units(load_manifest(write("m.yaml", text))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "jobs:\n  - prompt: a cat\n", [("a cat", 512, 512, 0)]),
        (
            BASE + "jobs:\n  - prompt: a cat\n    count: 3\n",
            [("a cat", 512, 512, r) for r in range(3)],
        ),
        (
            BASE + "jobs:\n  - prompt: a cat\n    sizes: [[256, 256], [768, 432]]\n",
            [("a cat", 256, 256, 0), ("a cat", 768, 432, 0)],
        ),
        (
            BASE + "jobs:\n  - prompt: 'a {a} in {s}'\n    vars: {a: [cat, dog], s: [oil, ink]}\n",
            [
                ("a cat in oil", 512, 512, 0),
                ("a cat in ink", 512, 512, 0),
                ("a dog in oil", 512, 512, 0),
                ("a dog in ink", 512, 512, 0),
            ],
        ),
        # Without vars too, a literal brace is written twice.
        (BASE + "jobs:\n  - prompt: 'json {{like}} this'\n", [("json {like} this", 512, 512, 0)]),
        # The same request again later continues the repeat count instead of colliding.
        (
            BASE + "jobs:\n  - prompt: a cat\n  - prompt: a cat\n",
            [("a cat", 512, 512, 0), ("a cat", 512, 512, 1)],
        ),
        (
            "model: m1\njobs:\n  - prompt: p\n    width: 1024\n    height: 64\n    model: m2\n",
            [("p", 1024, 64, 0)],
        ),
    ],
)
def test_expansion(write: Write, text: str, expected: list) -> None:
    units = units_of(write, text)
    assert [(u.prompt, u.width, u.height, u.repeat) for u in units] == expected
    assert len({u.id for u in units}) == len(units)


def test_ids_are_stable_and_depend_on_every_request_field(write: Write) -> None:
    first = units_of(write, BASE + "jobs:\n  - prompt: a cat\n    params: {seed: 1}\n")
    again = units_of(write, BASE + "jobs:\n  - prompt: a cat\n    params: {seed: 1}\n")
    assert [u.id for u in first] == [u.id for u in again]
    for variant in (
        BASE + "jobs:\n  - prompt: a cat!\n    params: {seed: 1}\n",
        BASE + "jobs:\n  - prompt: a cat\n    params: {seed: 2}\n",
        BASE.replace("m1", "m2") + "jobs:\n  - prompt: a cat\n    params: {seed: 1}\n",
        BASE.replace("width: 512", "width: 528")
        + "jobs:\n  - prompt: a cat\n    params: {seed: 1}\n",
    ):
        assert units_of(write, variant)[0].id != first[0].id


def test_unit_ids_digest_the_canonical_request(write: Write) -> None:
    text = BASE + 'jobs:\n  - prompt: "caf\u00e9 \\"quoted\\" {x}"\n    vars: {x: [1, two]}\n'
    text += "    sizes: [[16, 32], [64, 48]]\n    count: 2\n"
    text += "    params: {z: [1, {b: 2, a: null}], seed: 5}\n"
    units = units_of(write, text)
    assert len(units) == 8
    for unit in units:
        size = Size(unit.width, unit.height, unit.aspect_ratio)
        request = canonical_request(unit.model, unit.prompt, size, unit.params)
        assert unit.id == unit_id(request, unit.repeat)


def test_ids_of_width_and_height_units_keep_their_old_digest(write: Write) -> None:
    # Output directories written before aspect ratios existed must resume unchanged.
    (unit,) = units_of(write, BASE + "jobs:\n  - prompt: a cat\n    params: {seed: 1}\n")
    old = hashlib.sha256(b'["m1","a cat",512,512,{"seed":1}]#0').hexdigest()[:20]
    assert unit.id == old


def test_aspect_ratios_and_no_size_make_their_own_units_and_bodies(write: Write) -> None:
    text = (
        "model: m1\naspect_ratio: '1:1'\njobs:\n"
        "  - prompt: a\n"  # the top's ratio
        "  - prompt: a\n    sizes: ['16:9', [512, 512], '1:1']\n"
        "  - prompt: a\n    width: 512\n    height: 512\n"  # the entry's own size wins
    )
    units = units_of(write, text)
    assert [(u.aspect_ratio, u.width, u.height) for u in units] == [
        ("1:1", None, None),
        ("16:9", None, None),
        (None, 512, 512),
        ("1:1", None, None),
        (None, 512, 512),
    ]
    # The same request made twice is a second repeat, not a second id space.
    assert [u.repeat for u in units] == [0, 0, 0, 1, 1]
    assert units[1].request_body() == {"prompt": "a", "aspectRatio": "16:9"}
    assert len({u.id for u in units}) == 5
    for unit in units:
        size = Size(unit.width, unit.height, unit.aspect_ratio)
        assert unit.id == unit_id(canonical_request("m1", "a", size, {}), unit.repeat)
    (bare,) = units_of(write, "model: m1\njobs:\n  - prompt: a\n")
    assert bare.request_body() == {"prompt": "a"} and bare.width is None
    assert bare.id not in {u.id for u in units}


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("model: m\naspect_ratio: 16:9\njobs:\n  - prompt: a\n", 2, "aspect_ratio", "quoted"),
        (
            "model: m\njobs:\n  - {prompt: a, aspect_ratio: 'wide'}\n",
            3,
            "jobs[0].aspect_ratio",
            "16:9",
        ),
        ("model: m\njobs:\n  - {prompt: a, sizes: ['0:9']}\n", 3, "jobs[0].sizes[0]", "ratio"),
        (
            "model: m\njobs:\n  - {prompt: a, aspect_ratio: '1:1', width: 512}\n",
            3,
            "jobs[0].width",
            "either",
        ),
        ("model: m\njobs:\n  - {prompt: a, sizes: ['1:1', '1:1']}\n", 3, "jobs[0].sizes", "twice"),
        (
            "model: m\njobs:\n  - {prompt: a, params: {aspectRatio: '1:1'}}\n",
            3,
            "jobs[0].params.aspectRatio",
            "aspect_ratio:",
        ),
        ("model: m\nwidth: 512\njobs:\n  - prompt: a\n", 4, "jobs[0].height", "no height"),
    ],
)
def test_bad_sizes_name_file_line_and_field(
    write: Write, text: str, line: int, field: str, message: str
) -> None:
    path = write("jobs.yaml", text)
    with pytest.raises(ManifestError) as caught:
        count_units(load_manifest(path))
    assert caught.value.line == line and caught.value.field == field
    assert message in caught.value.message


def test_params_merge_and_request_body(write: Write) -> None:
    text = (
        BASE
        + "params: {seed: 1, guidance: 3.5}\n"
        + "jobs:\n  - prompt: p\n    params: {seed: 7, numOutputs: 2}\n"
    )
    (unit,) = units_of(write, text)
    assert unit.request_body() == {
        "prompt": "p",
        "width": 512,
        "height": 512,
        "seed": 7,
        "guidance": 3.5,
        "numOutputs": 2,
    }


def test_prompt_files_carry_their_extra_columns(write: Write) -> None:
    write("p.txt", "first prompt\n\n  second prompt  \n")
    write("p.csv", 'prompt,sku,colour\n"a red, shiny cup",A1,red\nplain mug,B2,white\n')
    write("p.jsonl", '{"prompt": "from json", "tag": [1, 2]}\n\n{"prompt": "again"}\n')
    text = (
        BASE
        + "jobs:\n  - prompts_file: p.txt\n  - prompts_file: p.csv\n  - prompts_file: p.jsonl\n"
    )
    units = units_of(write, text)
    assert [u.prompt for u in units] == [
        "first prompt",
        "second prompt",
        "a red, shiny cup",
        "plain mug",
        "from json",
        "again",
    ]
    assert units[2].metadata == {"sku": "A1", "colour": "red"}
    assert units[4].metadata == {"tag": [1, 2]}
    assert units[1].source.endswith("p.txt:3")
    assert units[3].source.endswith("p.csv:3")


def test_expansion_is_lazy(write: Write) -> None:
    write("big.txt", "".join(f"prompt {i}\n" for i in range(1000)) + "\n" * 3 + ",\n")
    manifest = load_manifest(write("m.yaml", BASE + "jobs:\n  - prompts_file: big.txt\n"))
    iterator = iter_units(manifest)
    assert (
        next(iterator).prompt == "prompt 0"
    )  # the rest of the file is not needed for the first unit
    assert count_units(manifest) == 1001


@pytest.mark.parametrize(("text", "line", "field", "message"), BAD_MANIFESTS)
def test_bad_manifests_name_file_line_and_field(
    write: Write, text: str, line: int, field: str, message: str
) -> None:
    path = write("bad.yaml", text)
    with pytest.raises(ManifestError) as caught:
        count_units(load_manifest(path))
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert message in error.message
    assert "\n" not in str(error)
    assert str(error).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("name", "content", "line", "field"),
    [
        ("p.csv", "text,sku\nhello,1\n", 1, "prompt"),
        ("p.csv", "prompt,sku\nhello,1\n,2\n", 3, "prompt"),
        ("p.csv", "prompt,sku\nhello,1,extra\n", 2, "row"),
        ("p.jsonl", '{"prompt": "ok"}\n{"prompt": \n', 2, "json"),
        ("p.jsonl", '{"prompt": "ok"}\n{"text": "no prompt"}\n', 2, "prompt"),
        ("p.jsonl", '["not", "an object"]\n', 1, "json"),
        (
            "p.jsonl",
            '{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * 5000 + "]" * 5000 + "}\n",
            2,
            "json",
        ),
        ("p.jsonl", '{"prompt": "a", "x": ' + "[" * 40 + "]" * 40 + "}\n", 1, "json"),
        ("p.jsonl", '{"prompt": "a", "x": ' + "9" * 5000 + "}\n", 1, "json"),
    ],
)
def test_bad_prompt_files_name_their_own_line(
    write: Write, name: str, content: str, line: int, field: str
) -> None:
    prompts = write(name, content)
    manifest = load_manifest(write("m.yaml", BASE + f"jobs:\n  - prompts_file: {name}\n"))
    with pytest.raises(ManifestError) as caught:
        count_units(manifest)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(prompts), line, field)


def test_yaml_nested_past_what_can_be_read_is_refused_in_one_line(write: Write) -> None:
    path = write("deep.yaml", BASE + "jobs:\n  - prompt: a\n    params: {x: " + "[" * 3000 + "}\n")
    with pytest.raises(ManifestError, match="nested too deeply") as caught:
        load_manifest(path)
    assert "\n" not in str(caught.value)


def test_the_unit_bound_counts_prompts_files_and_can_be_raised(write: Write) -> None:
    write("p.txt", "".join(f"prompt {n}\n" for n in range(10)))
    manifest = load_manifest(
        write("m.yaml", BASE + "jobs:\n  - prompt: a\n  - prompts_file: p.txt\n    count: 2\n")
    )
    with pytest.raises(ManifestError, match="more than 20 units") as caught:
        count_units(manifest, max_units=20)
    assert (caught.value.line, caught.value.field) == (6, "jobs[1]")
    assert count_units(manifest, max_units=21) == 21


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "absent.yaml")


def test_seeds_fixed_derived_per_unit_or_left_to_the_api(write: Write) -> None:
    text = BASE + (
        "jobs:\n  - {prompt: fixed, params: {seed: 42}, count: 2}\n"
        "  - {prompt: derived, params: {seed: per-unit}, count: 3}\n"
        "  - {prompt: api, count: 1}\n"
    )
    units = units_of(write, text)
    assert [u.params["seed"] for u in units[:2]] == [42, 42]
    derived = [u.params["seed"] for u in units[2:5]]
    assert len(set(derived)) == 3 and all(isinstance(s, int) and 0 <= s < 2**31 for s in derived)
    assert derived == [u.params["seed"] for u in units_of(write, text)[2:5]]  # reproducible
    assert "seed" not in units[5].params
    # How the seed is chosen is part of the unit: switching it makes new units.
    plain = units_of(write, BASE + "jobs:\n  - {prompt: derived, count: 3}\n")
    assert {u.id for u in plain}.isdisjoint(u.id for u in units[2:5])


@pytest.mark.parametrize("seed", ["randomly", "1.5", "true", "[1]"])
def test_a_seed_is_a_number_per_unit_or_random(write: Write, seed: str) -> None:
    with pytest.raises(ManifestError, match="whole number, 'per-unit' or 'random'"):
        units_of(write, BASE + f"jobs:\n  - prompt: p\n    params: {{seed: {seed}}}\n")


def test_a_random_seed_is_left_to_the_api_and_makes_units_of_its_own(write: Write) -> None:
    (chosen,) = units_of(write, BASE + "jobs:\n  - prompt: p\n    params: {seed: random}\n")
    assert "seed" not in chosen.request_body()
    (plain,) = units_of(write, BASE + "jobs:\n  - prompt: p\n")
    assert chosen.id != plain.id


def test_counting_agrees_with_expanding(write: Write) -> None:
    write("p.txt", "one\ntwo\none\n")
    write("p.csv", "prompt,sku\nred,A\nblue,B\n")
    manifest = load_manifest(
        write(
            "m.yaml",
            BASE
            + "jobs:\n"
            + "  - prompt: 'a {x} in {y}'\n    vars: {x: [cat, dog], y: [ink, oil, clay]}\n"
            + "  - prompts_file: p.txt\n    sizes: [[64, 64], [128, 64]]\n    count: 3\n"
            + "  - prompts_file: p.csv\n    count: 2\n",
        )
    )
    assert count_units(manifest) == len(list(iter_units(manifest))) == 6 + 3 * 2 * 3 + 2 * 2


def test_a_templates_columns_are_checked_in_every_row_before_anything_runs(write: Write) -> None:
    prompts = write("p.jsonl", '{"prompt": "a", "kind": "x"}\n\n{"prompt": "b"}\n')
    manifest = load_manifest(
        write("m.yaml", BASE + "filename: '{kind}/{index}'\njobs:\n  - prompts_file: p.jsonl\n")
    )
    with pytest.raises(ManifestError) as caught:
        count_units(manifest)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(prompts), 3, "kind")
    with pytest.raises(ManifestError, match="columns"):
        list(iter_units(manifest))


def test_units_are_numbered_in_manifest_order(write: Write) -> None:
    write("p.txt", "one\ntwo\n")
    units = units_of(
        write,
        BASE + "jobs:\n  - {prompt: a, count: 2, sizes: [[64, 64], [128, 64]]}\n"
        "  - prompts_file: p.txt\n",
    )
    assert [u.index for u in units] == list(range(6))
    assert [u.prompt for u in units[4:]] == ["one", "two"]


def test_a_prompts_file_names_its_caption_column_and_the_columns_kept(write: Write) -> None:
    write("p.csv", "caption,sku,colour,junk\nred mug,A1,red,x\n")
    write("p.jsonl", '{"text": "blue mug", "sku": "B2", "junk": 1}\n')
    (csv_unit, jsonl_unit) = units_of(
        write,
        BASE + "columns: [sku]\njobs:\n"
        "  - {prompts_file: p.csv, prompt_column: caption}\n"
        "  - {prompts_file: p.jsonl, prompt_column: text}\n",
    )
    assert (csv_unit.prompt, dict(csv_unit.metadata)) == ("red mug", {"sku": "A1"})
    assert (jsonl_unit.prompt, dict(jsonl_unit.metadata)) == ("blue mug", {"sku": "B2"})


@pytest.mark.parametrize(
    ("entry", "line", "field", "message"),
    [
        ("{prompts_file: p.csv, prompt_column: text}", 1, "text", "no 'text' column"),
        ("{prompts_file: p.csv, columns: [sku, size]}", 1, "size", "not in the header"),
        ("{prompt: a, prompt_column: caption}", 5, "jobs[0].prompt_column", "prompts_file"),
        ("{prompts_file: p.csv, columns: [prompt]}", 5, "jobs[0].columns", "is the prompt"),
        ("{prompts_file: p.csv, columns: sku}", 5, "jobs[0].columns", "list of column names"),
    ],
)
def test_bad_column_choices_name_their_place(
    write: Write, entry: str, line: int, field: str, message: str
) -> None:
    write("p.csv", "prompt,sku\nred mug,A1\n")
    with pytest.raises(ManifestError) as caught:
        count_units(load_manifest(write("m.yaml", BASE + f"jobs:\n  - {entry}\n")))
    assert (caught.value.line, caught.value.field) == (line, field)
    assert message in caught.value.message
