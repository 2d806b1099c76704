"""The package's shape, kept: no import cycle (also through imports made inside
functions, the lazy ones), no class over 300 lines, no function over 80, and nothing
outside ``batchgen/output/`` asking which kind of output it has."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules ``module`` imports anywhere in it (inside functions too),
    but under ``if TYPE_CHECKING:`` (not imported when it runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            targets = [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_even_through_imports_made_when_called() -> None:
    known = modules()
    graph = {name: set(imported(name, path, known)) for name, path in known.items()}
    assert cycles(graph) == []


def test_cycles_are_found_where_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_class_over_300_lines_no_function_over_80() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{path.relative_to(PACKAGE)}: {node.name}: {lines} lines")
    assert too_long == []


def test_nothing_outside_the_output_seam_asks_which_kind_of_output_it_has() -> None:
    """The kinds of output live in ``batchgen/output/``: elsewhere no module imports
    one (the interfaces are ``open_output`` and ``open_kept``)."""
    known = modules()
    kinds = {
        f"batchgen.output.{name}"
        for name in ("bucket", "bucket_files", "bucket_kept", "local", "local_kept")
    }
    askers = {
        name: sorted(set(imported(name, path, known)) & kinds)
        for name, path in known.items()
        if not name.startswith("batchgen.output")
    }
    assert {name: found for name, found in askers.items() if found} == {}


# Modules outside output/ that may tell a bucket URL from a path, and why.
READS_BUCKET_URLS = {
    "batchgen.options": "--out's argument kept as written: a URL, or made a Path",
    "batchgen.upkeep": "an export's DEST, a folder or a bucket (not an output)",
    "batchgen.store.bucket": "where BucketUrl is",
}


def test_only_the_output_seam_tells_a_bucket_from_a_folder() -> None:
    """Which kind an output is, is told in ``batchgen/output/`` alone: elsewhere only
    the modules named above (each with its reason) read a bucket URL."""
    readers = {
        name
        for name, path in modules().items()
        if not name.startswith("batchgen.output")
        and re.search(r"\b(BucketUrl|is_bucket_url)\b", path.read_text("utf-8"))
    }
    assert readers == set(READS_BUCKET_URLS)
