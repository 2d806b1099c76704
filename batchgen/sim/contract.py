"""What the API takes: each endpoint's query and body parameters, their types and ranges,
and the rules between them, as the official SDK states them.

The table is ``api_contract.json``, derived from ``scenario-sdk``'s ``types/*_params.py``
(the wire names, ``Literal`` enums, and the rules their docstrings state: ``createdAfter``
requires ``sortBy=createdAt`` on the asset list, and so on) by ``tests/sdk_contract.py``,
which also checks that the file still says what the SDK says.  The simulator refuses a
request that breaks it with the 400 the real API answers, so a request the real API
refuses cannot pass the tests.

:func:`violation` is pure: the simulator calls it on every request, and the tests call it
with the SDK's own table on every request batchgen sent in the suite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

# Called with (method, path, query, parsed body) of every request a simulator in this
# process answers: the tests' switch for checking every request batchgen sends.
observers: list[Callable[[str, str, Mapping[str, str], Any], None]] = []

# The kinds a parameter's value can be; "any" takes what JSON can hold.
KINDS = ("str", "date", "int", "number", "bool", "enum", "enum_list", "str_list", "object", "any")


@dataclass(frozen=True, slots=True)
class Param:
    kind: str
    values: tuple[str, ...] = ()  # an enum's
    minimum: int | None = None  # a number's, or a list's length
    maximum: int | None = None
    required: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Param:
        return cls(
            kind=raw["kind"],
            values=tuple(raw.get("values", ())),
            minimum=raw.get("minimum"),
            maximum=raw.get("maximum"),
            required=bool(raw.get("required", False)),
        )

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"kind": self.kind}
        if self.values:
            raw["values"] = list(self.values)
        for name in ("minimum", "maximum"):
            if getattr(self, name) is not None:
                raw[name] = getattr(self, name)
        if self.required:
            raw["required"] = True
        return raw


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule between parameters, as a docstring states it.

    - ``requires``: ``param`` is allowed only when ``other`` is one of ``values``
      ("Requires the sortBy parameter to be createdAt", "Only available when privacy=public");
    - ``without``: ``param`` only without any of ``others`` ("Only allowed without ...");
    - ``with_any``: ``param`` only with one of ``others`` ("Only allowed with ... or ...");
    - ``only_with``: ``param`` only with ``others`` and nothing else ("Can only be combined
      with ...");
    - ``not_together``: ``param`` and ``others`` never together ("cannot be used together").
    """

    kind: str
    param: str
    others: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    text: str = ""  # the docstring's own words, given back in the refusal

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rule:
        return cls(
            raw["kind"],
            raw["param"],
            tuple(raw.get("others", ())),
            tuple(raw.get("values", ())),
            raw.get("text", ""),
        )

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"kind": self.kind, "param": self.param}
        if self.others:
            raw["others"] = list(self.others)
        if self.values:
            raw["values"] = list(self.values)
        if self.text:
            raw["text"] = self.text
        return raw


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # "/v1/jobs/{job_id}"
    source: str  # the SDK's method and params type
    query: Mapping[str, Param] = field(default_factory=dict)
    # None: the body is free (a model's inputs, checked against the model instead).
    body: Mapping[str, Param] | None = None
    rules: tuple[Rule, ...] = ()
    # Values a parameter takes when it is not sent, where the docstring says so.
    defaults: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    def matches(self, method: str, path: str) -> bool:
        if method != self.method:
            return False
        want = self.path.strip("/").split("/")
        got = path.strip("/").split("/")
        return len(want) == len(got) and all(
            w == g or (w.startswith("{") and g != "") for w, g in zip(want, got, strict=True)
        )

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Endpoint:
        body = raw.get("body")
        return cls(
            method=raw["method"],
            path=raw["path"],
            source=raw.get("source", ""),
            query={name: Param.from_json(p) for name, p in raw.get("query", {}).items()},
            body=None if body is None else {n: Param.from_json(p) for n, p in body.items()},
            rules=tuple(Rule.from_json(r) for r in raw.get("rules", ())),
            defaults=dict(raw.get("defaults", {})),
        )

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"method": self.method, "path": self.path, "source": self.source}
        raw["query"] = {name: p.to_json() for name, p in sorted(self.query.items())}
        raw["body"] = (
            None if self.body is None else {n: p.to_json() for n, p in sorted(self.body.items())}
        )
        if self.rules:
            raw["rules"] = [r.to_json() for r in self.rules]
        if self.defaults:
            raw["defaults"] = dict(sorted(self.defaults.items()))
        return raw


def find(endpoints: Sequence[Endpoint], method: str, path: str) -> Endpoint | None:
    """The endpoint a request is for; a literal segment beats a placeholder
    (``/v1/assets/get-bulk`` is not an asset named ``get-bulk``)."""
    matching = [e for e in endpoints if e.matches(method, path)]
    return min(matching, key=lambda e: e.path.count("{"), default=None)


def _query_value_problem(name: str, param: Param, value: str) -> str | None:
    match param.kind:
        case "int":
            try:
                number = int(value)
            except ValueError:
                return f'"{name}" must be an integer, got {value!r}'
            return _range_problem(name, param, number)
        case "number":
            try:
                float(value)
            except ValueError:
                return f'"{name}" must be a number, got {value!r}'
        case "bool":
            if value not in ("true", "false"):
                return f'"{name}" must be true or false, got {value!r}'
        case "date":
            return _date_problem(name, value)
        case "enum":
            if value not in param.values:
                return f'"{name}" must be one of the documented values, got {value!r}'
        case "enum_list":
            for item in value.split(","):
                if item not in param.values:
                    return f'"{name}" must list documented values, got {item!r}'
    return None


def _date_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f'"{name}" must be an ISO 8601 date'
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f'"{name}" must be an ISO 8601 date, got {value!r}'
    return None


def _range_problem(name: str, param: Param, size: int) -> str | None:
    if param.minimum is not None and size < param.minimum:
        return f'"{name}" must be at least {param.minimum}, got {size}'
    if param.maximum is not None and size > param.maximum:
        return f'"{name}" must be at most {param.maximum}, got {size}'
    return None


def _body_value_problem(name: str, param: Param, value: Any) -> str | None:
    def kind_is(*types: type) -> bool:
        return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)

    match param.kind:
        case "str":
            ok = kind_is(str)
        case "date":
            return _date_problem(name, value)
        case "int":
            if not kind_is(int):
                return f'"{name}" must be an integer'
            return _range_problem(name, param, value)
        case "number":
            ok = kind_is(int, float)
        case "bool":
            ok = kind_is(bool)
        case "enum":
            if value not in param.values:
                return f'"{name}" must be one of the documented values, got {value!r}'
            ok = True
        case "enum_list" | "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f'"{name}" must be a list of strings'
            bad = [v for v in value if param.kind == "enum_list" and v not in param.values]
            if bad:
                return f'"{name}" must list documented values, got {bad[0]!r}'
            return _range_problem(f"{name}'s length", param, len(value))
        case "object":
            ok = kind_is(dict)
        case _:
            ok = True
    return None if ok else f'"{name}" must be of type {param.kind}'


def _rule_problem(rule: Rule, given: Mapping[str, Any], defaults: Mapping[str, str]) -> str | None:
    if rule.param not in given:
        return None
    present = [other for other in rule.others if other in given]
    words = f" ({rule.text})" if rule.text else ""
    match rule.kind:
        case "requires":
            (other,) = rule.others
            value = given.get(other, defaults.get(other))
            if value not in rule.values:
                wanted = "/".join(rule.values)
                return f'"{rule.param}" requires {other}={wanted}{words}'
        case "without":
            if present:
                return f'"{rule.param}" is not allowed with "{present[0]}"{words}'
        case "with_any":
            if not present:
                return f'"{rule.param}" is only allowed with one of {", ".join(rule.others)}{words}'
        case "only_with":
            extra = sorted(set(given) - set(rule.others) - {rule.param})
            if extra:
                return f'"{rule.param}" cannot be combined with "{extra[0]}"{words}'
        case "not_together":
            if present:
                return f'"{rule.param}" and "{present[0]}" cannot be used together{words}'
    return None


def violation(endpoint: Endpoint, query: Mapping[str, str], body: Any) -> str | None:
    """Why the API refuses this request (400), or None: the first broken rule."""
    for name, value in query.items():
        param = endpoint.query.get(name)
        if param is None:
            return f'unknown query parameter "{name}"'
        problem = _query_value_problem(name, param, value)
        if problem:
            return problem
    if endpoint.body is not None and body is not None:
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        for name, value in body.items():
            param = endpoint.body.get(name)
            if param is None:
                return f'unknown body parameter "{name}"'
            problem = _body_value_problem(name, param, value)
            if problem:
                return problem
        for name, param in endpoint.body.items():
            if param.required and name not in body:
                return f'"{name}" is required'
    given: dict[str, Any] = dict(query)
    if isinstance(body, dict) and endpoint.body is not None:
        given.update(body)
    for rule in endpoint.rules:
        problem = _rule_problem(rule, given, endpoint.defaults)
        if problem:
            return problem
    return None


def parse(raw: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_json(e) for e in raw["endpoints"])


@cache
def simulated() -> tuple[Endpoint, ...]:
    """The endpoints the simulator serves, as ``api_contract.json`` gives them."""
    text = resources.files(__package__).joinpath("api_contract.json").read_text("utf-8")
    return parse(json.loads(text))
