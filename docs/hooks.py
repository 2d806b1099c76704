"""MkDocs hooks: the CLI reference is made from batchgen's own argparse parser when the
site is built, so it says what ``--help`` says, and nothing drifts.

A page holding ``<!-- cli-reference -->`` gets, in its place, a section for each command:
its usage, what it does, and a table of its options by group (each with its help,
which says its default).
``tests/test_docs.py`` checks it against ``--help``, option by option.
"""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def commands() -> dict[str, argparse.ArgumentParser]:
    """``batchgen``'s subcommands, each its parser, in the order ``--help`` lists them."""
    from batchgen import cli

    return commands_of(cli.build_parser())


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("batchgen's parser has no subcommands")


def cli_reference() -> str:
    from batchgen import cli

    top = cli.build_parser()
    sections = [_usage(top, "batchgen"), _options(top)]
    for name, parser in commands_of(top).items():
        sections.append(f"## batchgen {name}\n")
        sections.append(_usage(parser, f"batchgen {name}"))
        if parser.description:
            sections.append(_escape(parser.description) + "\n")
        sections.append(_options(parser))
        if parser.epilog:
            sections.append(f"```\n{parser.epilog}\n```\n")
    return "\n".join(sections)


def _usage(parser: argparse.ArgumentParser, prog: str) -> str:
    parser.prog = prog
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return f"```\n{usage}\n```\n"


def _options(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    parts = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction
            ):
                continue
            rows.append(_row(action, formatter))
        if rows:
            title = (group.title or "options").capitalize()
            table = "| option | meaning |\n|---|---|\n" + "\n".join(rows)
            parts.append(f"**{title}**\n\n{table}\n")
    return "\n".join(parts)


def _row(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if action.option_strings:
        metavar = ""
        if action.nargs != 0:
            metavar = " " + formatter._format_args(action, action.dest.upper())
        name = ", ".join(f"`{option}{metavar}`" for option in action.option_strings)
    else:
        name = f"`{formatter._format_args(action, action.dest)}`"
    meaning = formatter._expand_help(action) if action.help else ""
    return f"| {name} | {_escape(meaning)} |"


def _escape(text: str) -> str:
    """Plain text as Markdown table cells and paragraphs take it."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")
