"""Installing it like a real package: the name on the index is this project's, every
install hint names it, and the extras the README and the messages name exist."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
# What a hint may tell a user to install besides this project (third-party libraries).
OTHERS = {"boto3", "s3fs", "playwright", "build", "pip"}


def texts() -> dict[str, str]:
    files = [ROOT / "README.md", ROOT / ".ci" / "run", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("batchgen", "tests", "bench"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return {str(path.relative_to(ROOT)): path.read_text("utf-8") for path in files}


def test_the_distribution_is_not_the_other_batchgen_and_installs_the_command() -> None:
    assert PROJECT["name"] == "scenario-batchgen"
    assert PROJECT["scripts"] == {"batchgen": "batchgen.cli:main"}
    # The gallery's thumbnails come out of the box.
    assert any(dependency.startswith("Pillow") for dependency in PROJECT["dependencies"])


def test_every_install_hint_names_this_project_or_a_library_by_its_own_name() -> None:
    wrong = []
    for where, text in texts().items():
        if where == "tests/test_packaging.py":
            continue
        for command in re.findall(r"pip install ([^\n`\"]+)", text):
            command = re.split(r"&&|;|#|\||\)", command)[0]
            words = shlex.split(command, posix=True) if command.count("'") % 2 == 0 else []
            targets = [word for word in words if not word.startswith("-")][:1]
            for target in targets:
                name = re.split(r"[\[<>=@ ]", target, maxsplit=1)[0]
                if name.startswith(("git+", "/", "$", "<", "{", ".")):
                    continue
                if name in ("scenario-batchgen", *OTHERS) or name.endswith(".whl"):
                    continue
                wrong.append((where, target))
    assert not wrong


def test_the_extras_named_anywhere_exist() -> None:
    extras = set(PROJECT["optional-dependencies"])
    named = set()
    for text in texts().values():
        named |= set(re.findall(r"scenario-batchgen\[([\w-]+)\]", text))
        named |= set(re.findall(r"'\.\[([\w-]+)\]'", text))
    assert named and named <= extras, named - extras
