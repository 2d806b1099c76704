"""The documentation holds: the README stays short, the CLI reference says what
``--help`` says (it is made from the parser), the exit codes table has every code, and
every shell block marked runnable runs as written against the simulator (slow)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from batchgen.errors import EXIT_MEANINGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b")
RUNNABLE = re.compile(r"<!-- runnable -->\n```sh\n(.*?)```", re.S)


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sections(reference: str) -> dict[str, str]:
    """The reference's section of each command."""
    parts = re.split(r"^## batchgen (\w+)\n", reference, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_readme_is_short_and_in_a_users_order() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert len(readme.splitlines()) <= 200
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings == [
        "Install",
        "A 60-second demo, with no account and no network",
        "A manifest, and what it makes",
        "Against the real API",
        "Run the tests",
        "Documentation",
    ]
    # The picture it shows is there.
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", readme):
        assert (ROOT / image).is_file(), image


def test_every_option_in_help_is_in_the_cli_reference_and_the_other_way_round() -> None:
    module = hooks()
    by_command = sections(module.cli_reference())
    parsers = module.commands()
    assert set(by_command) == set(parsers)
    for name, parser in parsers.items():
        in_help = set(OPTION.findall(parser.format_help())) - {"-h", "--help"}
        in_reference = set(OPTION.findall(by_command[name])) - {"-h", "--help"}
        assert in_help == in_reference, name


def test_a_changed_help_text_changes_the_reference_with_no_other_edit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batchgen.cli

    module = hooks()
    original = batchgen.cli.build_parser

    def reworded() -> object:
        parser = original()
        for action in module.commands_of(parser)["run"]._actions:
            if "--budget" in action.option_strings:
                action.help = "a budget, said another way"
        return parser

    monkeypatch.setattr(batchgen.cli, "build_parser", reworded)
    assert "a budget, said another way" in sections(module.cli_reference())["run"]


def test_the_exit_codes_table_has_every_code() -> None:
    running = (DOCS / "running.md").read_text("utf-8")
    table = running[running.index("## Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert documented == set(EXIT_MEANINGS)


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for index, block in enumerate(RUNNABLE.findall(path.read_text("utf-8"))):
            found.append((f"{path.relative_to(ROOT)}#{index}", block))
    return found


def test_there_are_runnable_blocks_to_run() -> None:
    assert len(runnable_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("where", "block"), runnable_blocks(), ids=lambda v: v.split("#")[0])
def test_each_runnable_block_runs_as_written(where: str, block: str, tmp_path: Path) -> None:
    """In an empty directory holding the example manifest, with the installed
    ``batchgen`` on the PATH and no credentials: each line must succeed."""
    shutil.copy(ROOT / "jobs.example.yaml", tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENARIO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{where}\n{completed.stdout[-2000:]}{completed.stderr[-3000:]}"
    )
