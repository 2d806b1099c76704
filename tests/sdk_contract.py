"""The API's request contract, read out of the official SDK (``scenario-sdk``, generated
from Scenario's OpenAPI spec): for every endpoint, which parameters go in the query and
which in the body (from the resource methods' source), their wire names, types and enums
(``types/*_params.py``), and the ranges and rules their docstrings state.

Test-only: batchgen never imports the SDK.  ``batchgen/sim/api_contract.json`` is this
table for the endpoints the simulator serves; regenerate it after an SDK upgrade with

    python -m tests.sdk_contract > batchgen/sim/api_contract.json

(``tests/test_request_contract.py`` fails until it is).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import typing
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from batchgen.sim.contract import Endpoint, Param, Rule

LIST_TYPES = ("list", "List", "Sequence", "SequenceNotStr", "Iterable")
VERBS = {"_get": "GET", "_post": "POST", "_put": "PUT", "_patch": "PATCH", "_delete": "DELETE"}
# Phrases of a docstring that state a rule between parameters: each one is parsed into
# a Rule below, or listed in UNENFORCED with the reason, so a rule a new SDK adds to an
# endpoint batchgen uses cannot go unnoticed.
RULE_PHRASE = re.compile(
    r"[^.]*\b(?:Requires|Only allowed|Only available|cannot be used together|"
    r"Can only be combined|are required|is required|Must be used with)\b[^.]*\.?"
)
_QUOTED = re.compile(r'"(\w+)"')
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'Requires the (\w+) parameter to be "(\w+)"'), "requires"),
    (re.compile(r"Only available when (\w+)=([\w/]+)"), "requires"),
    (re.compile(r'Only allowed without ((?:"\w+"(?:,| and| or)?\s*)+)'), "without"),
    (re.compile(r'Only allowed with ((?:"\w+"(?:,| and| or)?\s*)+)'), "with_any"),
    (re.compile(r'Can only be combined with ((?:"\w+"(?:,| and| or)?\s*)+)'), "only_with"),
    (re.compile(r'The parameter "(\w+)" and "(\w+)" cannot be used together'), "not_together"),
    (re.compile(r"If provided, (\w+) is required"), "with_any"),
)


def sdk_root() -> Path:
    import scenario_sdk

    return Path(scenario_sdk.__file__).parent


def _docstrings(module_name: str, class_name: str) -> dict[str, str]:
    """Each field's docstring (the string that follows its annotation), by Python name."""
    relative = module_name.removeprefix("scenario_sdk.").replace(".", "/")
    source = (sdk_root() / f"{relative}.py").read_text("utf-8")
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            body = node.body
            for item, after in zip(body, body[1:] + [None], strict=True):
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    text = ""
                    if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                        text = " ".join(str(after.value.value).split())
                    found[item.target.id] = text
    return found


def _kind(hint: Any, doc: str) -> Param:
    required = False
    origin = typing.get_origin(hint)
    while origin in (typing.Annotated, typing.Required, typing.NotRequired) or (
        origin is not None and getattr(origin, "__name__", "") in ("Required", "NotRequired")
    ):
        if origin is typing.Required or getattr(origin, "__name__", "") == "Required":
            required = True
        hint = typing.get_args(hint)[0]
        origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    maximum = _number(r"maximum value is (\d+)", doc) or _number(r"Limit of (\d+)", doc)
    minimum = _number(r"minimum value is (\d+)", doc)
    if origin is typing.Literal:
        return Param("enum", tuple(str(a) for a in args), required=required)
    if hint is bool:
        return Param("bool", required=required)
    if hint is int:
        return Param("int", minimum=minimum, maximum=maximum, required=required)
    if hint is float:
        return Param("number", minimum=minimum, maximum=maximum, required=required)
    if hint is str:
        return Param("date" if "ISO" in doc else "str", required=required)
    if args and getattr(origin, "__name__", "") in LIST_TYPES:
        item = args[0]
        if typing.get_origin(item) is typing.Literal:
            values = tuple(str(a) for a in typing.get_args(item))
            return Param("enum_list", values, maximum=maximum, required=required)
        if item is str:
            return Param("str_list", maximum=maximum, required=required)
        return Param("any", required=required)
    if hint is object:
        return Param("any", required=required)
    if isinstance(hint, type) and issubclass(hint, dict):
        return Param("object", required=required)
    return Param("any", required=required)


def _number(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else None


@cache
def _params_type(module_name: str, class_name: str) -> tuple[dict[str, tuple[str, Param]], Any]:
    """(python name → (wire name, Param)), and the docstrings, of one params TypedDict."""
    module = importlib.import_module(module_name)
    typed = getattr(module, class_name)
    hints = typing.get_type_hints(typed, include_extras=True)
    docs = _docstrings(module_name, class_name)
    fields: dict[str, tuple[str, Param]] = {}
    for name, hint in hints.items():
        alias = name
        for extra in getattr(hint, "__metadata__", ()):
            alias = getattr(extra, "alias", None) or alias
        fields[name] = (alias, _kind(hint, docs.get(name, "")))
    return fields, docs


def rules_of(alias: str, doc: str, aliases: set[str]) -> list[Rule]:
    """The rules one parameter's docstring states, on the wire names."""
    rules: list[Rule] = []
    for pattern, kind in _RULES:
        for found in pattern.finditer(doc):
            text = found.group(0)
            if kind == "requires":
                other, values = found.group(1), tuple(found.group(2).split("/"))
                rules.append(Rule("requires", alias, (other,), values, text))
            elif kind == "not_together":
                pair = {found.group(1), found.group(2)}
                if alias in pair:
                    rules.append(Rule("not_together", alias, tuple(pair - {alias}), (), text))
            else:
                others = tuple(_QUOTED.findall(found.group(1))) or (found.group(1),)
                rules.append(Rule(kind, alias, others, (), text))
    return rules


def unparsed_rule_phrases(alias: str, doc: str) -> list[str]:
    """The docstring's rule-like sentences that no pattern above reads."""
    parsed = [m.group(0) for pattern, _ in _RULES for m in pattern.finditer(doc)]
    return [
        sentence.strip()
        for sentence in RULE_PHRASE.findall(doc)
        if not any(p in sentence for p in parsed)
    ]


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """The SDK modules a resource file imports, by the name it uses for each."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "types" in node.module:
            package = "scenario_sdk." + node.module.lstrip(".").removeprefix("scenario_sdk.")
            for alias in node.names:
                found[alias.asname or alias.name] = f"{package}.{alias.name}"
    return found


def _transformed(
    node: ast.AST | None, modules: dict[str, str]
) -> tuple[list[str] | None, tuple[str, str] | None]:
    """The Python names of a ``maybe_transform({...}, module.Params)`` call (None: a
    free object) and the params type it names (module, class)."""
    if not isinstance(node, ast.Call) or _call_name(node.func) not in (
        "maybe_transform",
        "async_maybe_transform",
    ):
        return None, None
    given, typed = node.args[0], node.args[1]
    target = None
    if isinstance(typed, ast.Attribute) and isinstance(typed.value, ast.Name):
        target = (modules[typed.value.id], typed.attr)
    if isinstance(given, ast.Dict):
        return [k.value for k in given.keys if isinstance(k, ast.Constant)], target
    return None, target


def _requests(tree: ast.AST) -> Iterator[tuple[str, str, str, ast.Call]]:
    """(resource method, HTTP method, path, the call) for each request a sync resource
    method makes."""
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        if not any(_call_name(b) == "SyncAPIResource" for b in cls.bases):
            continue
        for function in cls.body:
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                verb = node.func.attr
                if verb not in (*VERBS, "_get_api_list") or not node.args:
                    continue
                first = node.args[0]
                if isinstance(first, ast.Call) and first.args:
                    first = first.args[0]
                if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
                    continue
                method = VERBS.get(verb, "GET")
                for keyword in node.keywords:
                    if keyword.arg == "method" and isinstance(keyword.value, ast.Constant):
                        method = str(keyword.value.value).upper()
                yield f"{cls.name}.{function.name}", method, "/v1" + first.value, node


def _endpoint(
    resource: str, method: str, path: str, call: ast.Call, modules: dict[str, str]
) -> Endpoint:
    body_node = next((k.value for k in call.keywords if k.arg == "body"), None)
    options = next((k.value for k in call.keywords if k.arg == "options"), None)
    query_node = None
    if isinstance(options, ast.Call):
        query_node = next((k.value for k in options.keywords if k.arg == "query"), None)
    query_names, query_type = _transformed(query_node, modules)
    body_names, body_type = _transformed(body_node, modules)
    typed = query_type or body_type
    fields: dict[str, tuple[str, Param]] = {}
    docs: dict[str, str] = {}
    if typed is not None:
        fields, docs = _params_type(*typed)
    query = {fields[n][0]: fields[n][1] for n in query_names or () if n in fields}
    body: dict[str, Param] | None = None
    if body_names is not None:
        body = {fields[n][0]: fields[n][1] for n in body_names if n in fields}
    elif body_node is None and method in ("POST", "PUT", "PATCH"):
        body = {}
    sent = {fields[n][0]: n for n in [*(query_names or ()), *(body_names or ())] if n in fields}
    rules: list[Rule] = []
    defaults: dict[str, str] = {}
    for alias, name in sent.items():
        doc = docs.get(name, "")
        rules.extend(rules_of(alias, doc, set(sent)))
        default = re.search(r"The default value is `(\w+)`", doc)
        if default:
            defaults[alias] = default.group(1)
    source = resource + (f" ({typed[0].removeprefix('scenario_sdk.')}.{typed[1]})" if typed else "")
    return Endpoint(method, path, source, query, body, tuple(rules), defaults)


@cache
def sdk_endpoints() -> tuple[Endpoint, ...]:
    """Every endpoint the SDK knows, its contract read out of the SDK."""
    endpoints: dict[str, Endpoint] = {}
    for file in sorted((sdk_root() / "resources").rglob("*.py")):
        tree = ast.parse(file.read_text("utf-8"))
        modules = _imported_modules(tree)
        for resource, method, path, call in _requests(tree):
            endpoint = _endpoint(resource, method, path, call, modules)
            endpoints.setdefault(endpoint.name, endpoint)
    return tuple(endpoints.values())


def docstrings_of(endpoint: Endpoint) -> dict[str, str]:
    """Each sent parameter's docstring, by wire name."""
    found = re.search(r"\(([\w.]+)\.(\w+)\)$", endpoint.source)
    if not found:
        return {}
    fields, docs = _params_type("scenario_sdk." + found.group(1), found.group(2))
    return {alias: docs.get(py, "") for py, (alias, _) in fields.items()}


def contract_json(names: list[str]) -> dict[str, Any]:
    """The table for these endpoints, as ``api_contract.json`` holds it."""
    by_name = {e.name: e for e in sdk_endpoints()}
    return {
        "sdk": "scenario-sdk " + importlib.metadata.version("scenario-sdk"),
        "generated_by": "python -m tests.sdk_contract > batchgen/sim/api_contract.json",
        "endpoints": [by_name[name].to_json() for name in names],
    }


# The endpoints the simulator serves (the names of SDK endpoints).
SIMULATED = [
    "POST /v1/generate/custom/{model_id}",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "POST /v1/jobs/{job_id}/action",
    "POST /v1/assets/get-bulk",
    "POST /v1/assets",
    "GET /v1/assets",
    "GET /v1/assets/{asset_id}",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "POST /v1/generate/quality-gate",
    "GET /v1/teams",
    "GET /v1/teams/{team_id}/limits",
    "GET /v1/usages",
]


if __name__ == "__main__":
    import importlib.metadata

    json.dump(contract_json(SIMULATED), sys.stdout, indent=1)
    sys.stdout.write("\n")


class RequestJudge:
    """Checks each request a simulator in this process answers against the SDK's table
    (not the simulator's copy): an endpoint the SDK does not know, a parameter it does
    not name, a value of the wrong type or out of range, a rule its docstrings state.
    Each problem is kept with the batchgen code that sent the request."""

    def __init__(self, endpoints: Iterable[Endpoint] | None = None) -> None:
        """``endpoints``: the table to judge by, every endpoint the SDK knows unless
        given (the suite's judge takes the shipped table of the endpoints the simulator
        serves, which test_request_contract keeps equal to the SDK's: reading the SDK
        costs each test worker seconds)."""
        self.problems: list[str] = []
        self.seen = 0
        self.unknown = (
            "the SDK knows no such endpoint"
            if endpoints is None
            else "no such endpoint in the SDK's table of the endpoints the simulator serves"
        )
        self._index: dict[tuple[str, int], list[Endpoint]] = {}
        for endpoint in sdk_endpoints() if endpoints is None else endpoints:
            key = (endpoint.method, endpoint.path.count("/"))
            self._index.setdefault(key, []).append(endpoint)

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        from batchgen.sim.contract import find

        return find(self._index.get((method, ("/" + path.strip("/")).count("/")), []), method, path)

    def __call__(self, method: str, path: str, query: Any, body: Any) -> None:
        from batchgen.sim.contract import violation

        self.seen += 1
        endpoint = self.endpoint(method, path)
        problem = (
            f"{method} {path}: {self.unknown}"
            if endpoint is None
            else violation(endpoint, query, body)
        )
        if problem:
            sent = {"query": dict(query), "body": body}
            self.problems.append(f"{method} {path}: {problem}\n  sent {sent}\n  by {call_site()}")


def call_site() -> str:
    """The innermost frames of batchgen outside the simulator and the transport: the
    code that made the request (over loopback, the server's stack holds none)."""
    import traceback

    frames = [
        f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
        for frame in traceback.extract_stack()
        if "/batchgen/" in frame.filename
        and "/batchgen/sim/" not in frame.filename
        and not frame.filename.endswith("transport.py")
    ]
    return " <- ".join(reversed(frames[-4:])) or "(carried over loopback: no client frame)"
