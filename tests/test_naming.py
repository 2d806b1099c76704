"""File name templates: what they render, and that nothing they render leaves OUT/images."""

from __future__ import annotations

import os
import random
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from batchgen.errors import ConfigError
from batchgen.manifest import Unit
from batchgen.manifest.naming import (
    DEFAULT_FILENAME,
    NAME_PART_MAX,
    FileNameTemplate,
    parse_template,
    safe_value,
    slug,
)


def unit(**changes: Any) -> Unit:
    fields: dict[str, Any] = {
        "id": "0123456789abcdef0123",
        "entry": "cats",
        "model": "model_abc",
        "prompt": "A cat, on a mat!",
        "width": 512,
        "height": 384,
        "params": {},
        "repeat": 2,
        "source": "m.yaml:5",
        "metadata": {"sku": "A1", "colour": "dark red"},
        "index": 7,
    }
    fields.update(changes)
    return Unit(**fields)


@pytest.mark.parametrize(
    ("template", "n", "expected"),
    [
        (DEFAULT_FILENAME.text, 0, "0123456789abcdef0123_0.png"),
        (DEFAULT_FILENAME.text, 3, "0123456789abcdef0123_3.png"),
        ("{index:06d}", 0, "000007.png"),
        # Without {n} a job's first image has the plain name and the others are numbered.
        ("{index:06d}", 1, "000007-1.png"),
        ("{entry}/{index}-{slug}", 0, "cats/7-a-cat-on-a-mat.png"),
        ("{model}/{width}x{height}/{id}", 0, "model_abc/512x384/0123456789abcdef0123.png"),
        ("{sku}-{colour}-{repeat}-{index}", 0, "A1-dark-red-2-7.png"),
        ("img {index} of {entry}", 0, "img 7 of cats.png"),
    ],
)
def test_render(template: str, n: int, expected: str) -> None:
    assert parse_template(template).render(unit(), n, ".png") == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{slug}", "must hold {id} or {index}"),
        ("{entry}/{n}", "must hold {id} or {index}"),
        ("../{id}", "'..' path part"),
        ("{entry}/../../{id}", "'..' path part"),
        ("./{id}", "'.' path part"),
        ("/etc/{id}", "must be relative"),
        ("{entry}//{id}", "an empty path part"),
        ("{id}/", "an empty path part"),
        (".{id}", "starts with a dot"),
        ("{entry}/.hidden/{id}", "starts with a dot"),
        ("..\\{id}", "'\\\\'"),
        ("C:{id}", "':'"),
        ("{id}\n", "'\\n'"),
        ("{id}*", "'*'"),
        ("{id!r}", "bad field"),
        ("{}{id}", "bad field"),
        ("{0}{id}", "bad field"),
        ("{id.real}", "bad field"),
        ("{id[0]}", "bad field"),
        ("{slug:.5}{id}", "only number fields"),
        ("{index:+d}", "not a safe file name"),
        ("{index:>8}", "not a safe file name"),
        ("{index:.>8}", "not a safe file name"),
        ("{index:/>8}", "not a safe file name"),
        ("{index:q}", "Unknown format code"),
        ("{id", "bad template"),
        ("{id}}", "bad template"),
        ("{a}{b}{c}{d}{id}", f"longer than {NAME_PART_MAX} bytes"),
        ("x" * 190 + "{id}", f"longer than {NAME_PART_MAX} bytes"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(template: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_template(template)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("A cat, on a mat!", "a-cat-on-a-mat"),
        ("  Crème brûlée — ÉCLAIR  ", "creme-brulee-eclair"),
        ("日本の猫", "untitled"),
        ("../../etc/passwd", "etc-passwd"),
        ("word " * 40, ("word-" * 12).rstrip("-")),
        ("x" * 100, "x" * 60),
    ],
)
def test_slug(prompt: str, expected: str) -> None:
    assert slug(prompt) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dark red", "dark-red"),
        ("../../x", "x"),
        ("-rf", "rf"),
        ("..", "_"),
        (".hidden", "hidden"),
        ("a/b\\c", "a-b-c"),
        ("", "_"),
        ("ok_Name-1.2", "ok_Name-1.2"),
    ],
)
def test_safe_value(value: str, expected: str) -> None:
    assert safe_value(value, 64) == expected


def test_values_never_name_anything_outside_the_images_directory(tmp_path: Path) -> None:
    rng = random.Random(6)
    alphabet = ["/", "\\", ".", "..", "~", "\x00", " ", "a", "Z", "é", "日", ":", "-", "\n"]

    def hostile() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))

    templates = [
        parse_template(t)
        for t in ("{slug}/{id}", "{entry}/{model}/{tag}{index}", "{tag}-{slug}-{index:04d}")
    ]
    images = tmp_path / "images"
    for _ in range(2000):
        one = unit(
            prompt=hostile() or "p", model=hostile(), entry=hostile(), metadata={"tag": hostile()}
        )
        for template in templates:
            relative = template.render(one, rng.randint(0, 3), ".png")
            assert not relative.is_absolute()
            assert all(part not in ("", ".", "..") for part in relative.parts)
            assert all(not part.startswith(".") for part in relative.parts)
            assert all(len(part.encode()) <= NAME_PART_MAX + 8 for part in relative.parts)
            resolved = os.path.normpath(images / relative)
            assert resolved.startswith(str(images) + os.sep)


def test_the_columns_a_template_needs_are_known_before_rendering() -> None:
    template = parse_template("{colour}/{sku}-{index}-{colour}")
    assert template.extras == ("colour", "sku")
    assert template.missing({"sku": "A1"}) == "colour"
    assert template.missing({"sku": "A1", "colour": ""}) is None
    # An empty or non-text value still gives a name part.
    assert template.render(unit(metadata={"sku": [1, 2], "colour": ""}), 0, ".jpg") == (
        PurePosixPath("_/1-2-7-_.jpg")
    )
    with pytest.raises(ConfigError, match="m.yaml:5: the file name template needs 'colour'"):
        template.render(unit(metadata={"sku": "A1"}), 0, ".png")


def test_the_default_is_what_earlier_versions_wrote() -> None:
    # Output directories made before templates existed resume with the same names.
    assert isinstance(DEFAULT_FILENAME, FileNameTemplate)
    assert DEFAULT_FILENAME.render(unit(), 1, ".webp") == PurePosixPath(
        "0123456789abcdef0123_1.webp"
    )
