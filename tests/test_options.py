"""Options declared once (batchgen/options.py): the command line's arguments, the
library's keywords and their check all come from RunOptions."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

import batchgen
from batchgen import options
from batchgen.cli import build_parser


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = commands.choices[name]
    assert isinstance(found, argparse.ArgumentParser)
    return found


def test_the_typed_keywords_are_written_from_the_declarations() -> None:
    written = (Path(options.__file__).with_name("keywords.py")).read_text("utf-8")
    assert written == options.keywords_source(), (
        "batchgen/keywords.py is stale: python -m batchgen.options > batchgen/keywords.py"
    )


def test_each_option_is_an_argument_with_the_declared_default_and_nothing_else() -> None:
    run = subparser("run")
    by_dest = {action.dest: action for action in run._actions}
    for declared in dataclasses.fields(options.RunOptions):
        flag = declared.metadata.get("flag")
        if flag is None:  # the library's only
            assert declared.name not in by_dest
            continue
        action = by_dest[declared.name]
        assert action.option_strings == ["--" + declared.name.replace("_", "-")]
        assert action.default == (None if flag.repeated else declared.default)
        assert action.help and flag.help in action.help
    # What run takes besides: the manifest and what only the command line has.
    extra = set(by_dest) - {f.name for f in dataclasses.fields(options.RunOptions)}
    cli_only = {"help", "manifest", "estimate", "progress_every", "json", "verbose", "quiet"}
    assert extra == cli_only | {"log_file", "log_format"}


@pytest.mark.parametrize("command", ["validate", "models", "verify"])
def test_commands_that_talk_to_the_api_take_the_same_connection_options(command: str) -> None:
    dests = {action.dest for action in subparser(command)._actions}
    assert {"api_url", "project_id", "simulate"} <= dests


def test_a_keyword_misspelled_is_refused_with_the_nearest_name(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("model: model_sim-fast\njobs:\n  - {prompt: p}\n")
    with pytest.raises(batchgen.ConfigError, match=r"concurency \(did you mean concurrency\?\)"):
        batchgen.run(manifest, concurency=3)  # type: ignore[call-arg]
