"""Which images an export keeps: ``--only-passed`` and ``--where`` conditions on the
columns of ``metadata.jsonl`` (pure).

A condition is ``COLUMN OP VALUE``, ``OP`` one of ``== != >= <= > <``, ``in`` (a value
among comma-separated ones) or ``not in``.  Numbers compare as numbers, anything else
as text; a row without the column never matches (but ``!=`` / ``not in``, which it
satisfies).  Every condition given must hold::

    --where "quality_score >= 60" --where "quality_verdict in pass,warn"
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
CONDITION = re.compile(
    r"\s*(?P<column>[A-Za-z_][A-Za-z0-9_.-]*)\s*"
    r"(?P<op>==|!=|>=|<=|>|<|\bnot\s+in\b|\bin\b)\s*(?P<value>.*?)\s*"
)
ONLY_PASSED = "quality_verdict == pass"


class BadCondition(ConfigError):
    """A ``--where`` that cannot be read."""


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    value: str

    def holds(self, row: Mapping[str, Any]) -> bool:
        negated = self.op in ("!=", "not in")
        if row.get(self.column) is None:
            return negated
        found = row[self.column]
        if self.op in ("in", "not in"):
            among = {part.strip() for part in self.value.split(",")}
            return (_text(found) in among) != negated
        left, right = _comparable(found, self.value)
        return COMPARISONS[self.op](left, right)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value}"


def parse_condition(text: str) -> Condition:
    match = CONDITION.fullmatch(text)
    if match is None or not match["value"]:
        raise BadCondition(
            f"--where {text!r}: write COLUMN OP VALUE, OP one of == != >= <= > < in, "
            "not in (e.g. 'quality_score >= 60')"
        )
    op = " ".join(match["op"].split())
    return Condition(match["column"], op, match["value"].strip("'\""))


@dataclass(frozen=True, slots=True)
class Selection:
    """Every condition given; none keeps everything."""

    conditions: tuple[Condition, ...] = ()

    @classmethod
    def of(cls, where: Iterable[str] = (), *, only_passed: bool = False) -> Selection:
        texts = [*where, *([ONLY_PASSED] if only_passed else [])]
        return cls(tuple(parse_condition(text) for text in texts))

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def keeps(self, row: Mapping[str, Any]) -> bool:
        return all(condition.holds(row) for condition in self.conditions)

    @property
    def columns(self) -> set[str]:
        return {condition.column for condition in self.conditions}

    def __str__(self) -> str:
        return " and ".join(str(condition) for condition in self.conditions)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _comparable(found: Any, given: str) -> tuple[Any, Any]:
    """Both as numbers when both are, else both as text."""
    if isinstance(found, int | float) and not isinstance(found, bool):
        try:
            return found, float(given)
        except ValueError:
            return _text(found), given
    return _text(found), given


EVERYTHING = Selection()
