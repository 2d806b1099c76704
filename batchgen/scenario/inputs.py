"""What a model takes: its input list, and a request body checked against it.

Pure code.  Scenario's models differ: flux-class models take ``width``/``height``,
Imagen-class ones ``aspectRatio`` and no size, some take no seed.  Each model lists its
inputs (``GET /v1/models/{modelId}`` → ``model.inputs[]``, the SDK's ``ModelInput``);
:func:`problems` checks a body against that list as the API would, so that a field the
model refuses is found once, before anything is sent, instead of once per unit in a
400 after half the batch has been paid for.

What is checked, per field of the body: that the model takes it (else "did you mean"),
its type (``boolean``, ``number``, ``string``, ``file`` and the ``_array`` types),
``min``/``max``/``step``, ``allowedValues``, ``minLength``/``maxLength`` (characters for
a string, items for an array); and for the model's inputs, that every one required
(always, or when another input is or is not given, or has some value) is given.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedResponseError

SIZE_INPUTS = ("width", "height")
RATIO_INPUT = "aspectRatio"
SEED_INPUT = "seed"
OUTPUTS_INPUT = "numOutputs"
# Images kept of a job that says nothing of how many it makes (see outputs_per_job).
MAX_OUTPUTS_PER_JOB = 16
# The largest seed drawn for a model whose seed input names no maximum.
SEED_MAX = 2**31 - 1
PROMPT_INPUT = "prompt"
ARRAY_ITEM_TYPES = {
    "number_array": "number",
    "string_array": "string",
    "file_array": "file",
    "model_array": "model",
}
# A step is met when the value is this close to a whole number of steps (0.1 + 0.2).
STEP_TOLERANCE = 1e-9


# Inputs that take images: one asset id, or a list of them.
FILE_TYPES = ("file", "file_array")


@dataclass(frozen=True, slots=True)
class ModelInput:
    name: str
    type: str
    allowed_values: tuple[Any, ...] | None = None
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_size: int | None = None
    kind: str | None = None
    # The API's rules for when it is required (the SDK's ModelInputRequired), as given.
    required: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def always_required(self) -> bool:
        return self.required.get("always") is True

    def describe_range(self) -> str:
        """What it accepts, in a few words, for tables and messages."""
        if self.allowed_values:
            return "one of " + ", ".join(_shown(v) for v in self.allowed_values)
        parts = []
        if self.minimum is not None or self.maximum is not None:
            low = _shown(self.minimum) if self.minimum is not None else ""
            high = _shown(self.maximum) if self.maximum is not None else ""
            parts.append(f"{low}..{high}")
        if self.step is not None:
            parts.append(f"step {_shown(self.step)}")
        if self.max_length is not None:
            unit = "items" if self.type.endswith("_array") else "characters"
            parts.append(f"at most {self.max_length} {unit}")
        if self.kind and self.type.startswith("file"):
            parts.append(f"{self.kind} asset id")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model and its inputs, as ``GET /v1/models/{id}`` describes it."""

    id: str
    name: str = ""
    privacy: str = ""
    inputs: Mapping[str, ModelInput] = field(default_factory=dict)

    def takes(self, name: str) -> bool:
        return name in self.inputs

    @property
    def image_lists(self) -> frozenset[str]:
        """Its image inputs that take several (``file_array``)."""
        return frozenset(i.name for i in self.inputs.values() if i.type == "file_array")

    @property
    def size_forms(self) -> tuple[str, ...]:
        """How the model is told a size: ``width/height``, ``aspectRatio``, both or none."""
        forms = []
        if all(self.takes(name) for name in SIZE_INPUTS):
            forms.append("width/height")
        if self.takes(RATIO_INPUT):
            forms.append(RATIO_INPUT)
        return tuple(forms)

    @property
    def outputs_per_job(self) -> int:
        """Images a job makes when ``numOutputs`` is not given: its default (its most,
        where it has none; 1 for a model that does not take it)."""
        item = self.inputs.get(OUTPUTS_INPUT)
        if item is None:
            return 1
        for value in (item.default, item.maximum):
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1:
                return int(value)
        return MAX_OUTPUTS_PER_JOB

    @property
    def seed_range(self) -> tuple[int, int] | None:
        """The seeds the model takes (lowest, highest), if it takes a numeric seed."""
        item = self.inputs.get(SEED_INPUT)
        if item is None or item.type != "number":
            return None
        low = int(item.minimum) if item.minimum is not None else 0
        high = int(item.maximum) if item.maximum is not None else SEED_MAX
        return (low, high) if high >= low else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "privacy": self.privacy,
            "inputs": [_input_json(i) for i in self.inputs.values()],
        }


def parse_model(payload: Any) -> ModelSpec:
    """``{"model": {...}}`` (or a bare model) into a spec; the inputs it cannot read are
    a malformed answer, not something to guess about."""
    model = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise MalformedResponseError("model response has no model id")
    raw_inputs = model.get("inputs") or []
    if not isinstance(raw_inputs, list):
        raise MalformedResponseError(f"model {model['id']}: inputs is not a list")
    inputs: dict[str, ModelInput] = {}
    for raw in raw_inputs:
        parsed = _parse_input(raw)
        if parsed is None:
            raise MalformedResponseError(f"model {model['id']}: an input has no name or type")
        inputs[parsed.name] = parsed
    return ModelSpec(
        id=model["id"],
        name=str(model.get("name") or ""),
        privacy=str(model.get("privacy") or ""),
        inputs=inputs,
    )


def _parse_input(raw: Any) -> ModelInput | None:
    if not isinstance(raw, dict):
        return None
    name, kind = raw.get("name"), raw.get("type")
    if not isinstance(name, str) or not name or not isinstance(kind, str):
        return None
    allowed = raw.get("allowedValues")
    required = raw.get("required")
    return ModelInput(
        name=name,
        type=kind,
        allowed_values=tuple(allowed) if isinstance(allowed, list) and allowed else None,
        default=raw.get("default"),
        minimum=_number(raw.get("min")),
        maximum=_number(raw.get("max")),
        step=_number(raw.get("step")) or None,
        min_length=_whole(raw.get("minLength")),
        max_length=_whole(raw.get("maxLength")),
        max_size=_whole(raw.get("maxSize")),
        kind=raw.get("kind") if isinstance(raw.get("kind"), str) else None,
        required=required if isinstance(required, dict) else {},
        label=str(raw.get("label") or ""),
    )


def model_from_json(payload: dict[str, Any]) -> ModelSpec:
    """A spec back from :meth:`ModelSpec.to_json` (as cached in the journal)."""
    spec = parse_model({"model": {**payload, "inputs": []}})
    inputs = {}
    for raw in payload.get("inputs") or []:
        parsed = _parse_input(raw)
        if parsed is not None:
            inputs[parsed.name] = parsed
    return ModelSpec(id=spec.id, name=spec.name, privacy=spec.privacy, inputs=inputs)


def _input_json(item: ModelInput) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": item.name, "type": item.type}
    optional = {
        "allowedValues": list(item.allowed_values) if item.allowed_values else None,
        "default": item.default,
        "min": item.minimum,
        "max": item.maximum,
        "step": item.step,
        "minLength": item.min_length,
        "maxLength": item.max_length,
        "maxSize": item.max_size,
        "kind": item.kind,
        "required": dict(item.required) or None,
        "label": item.label or None,
    }
    raw.update({key: value for key, value in optional.items() if value is not None})
    return raw


# ------------------------------------------------------------------------- checks


def problems(
    spec: ModelSpec, body: Mapping[str, Any], *, only: Iterator[str] | None = None
) -> list[tuple[str, str]]:
    """(field, message) for everything in ``body`` that ``spec`` would refuse, and every
    required input missing.  ``only`` limits the field checks to those names (the
    required inputs are then not checked)."""
    found: list[tuple[str, str]] = []
    names = list(body) if only is None else list(only)
    for name in names:
        if name not in body:
            continue
        message = field_problem(spec, name, body[name])
        if message:
            found.append((name, message))
    if only is None:
        found.extend(missing(spec, body))
    return found


def field_problem(spec: ModelSpec, name: str, value: Any) -> str | None:
    """Why the model would refuse ``name: value``, or None."""
    item = spec.inputs.get(name)
    if item is None:
        close = difflib.get_close_matches(name, list(spec.inputs), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        takes = ", ".join(sorted(spec.inputs)) or "nothing"
        return f"{spec.id} takes no input {name!r}{hint}; it takes: {takes}"
    return value_problem(item, value)


def value_problem(item: ModelInput, value: Any) -> str | None:
    if item.type in ARRAY_ITEM_TYPES or item.type == "inputs_array":
        if not isinstance(value, list):
            return f"must be a list ({item.type}), got {_type_name(value)}"
        length = _length_problem(item, len(value), "items")
        if length:
            return length
        inner = ARRAY_ITEM_TYPES.get(item.type)
        for index, element in enumerate(value):
            problem = _scalar_problem(item, element, inner) if inner else None
            if problem:
                return f"item {index}: {problem}"
        return None
    return _scalar_problem(item, value, item.type)


def _scalar_problem(item: ModelInput, value: Any, kind: str) -> str | None:
    if kind == "boolean":
        return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {_type_name(value)}"
        if item.allowed_values and not any(_same_number(value, v) for v in item.allowed_values):
            return f"must be {item.describe_range()}, got {_shown(value)}"
        if item.minimum is not None and value < item.minimum:
            return f"must be at least {_shown(item.minimum)}, got {_shown(value)}"
        if item.maximum is not None and value > item.maximum:
            return f"must be at most {_shown(item.maximum)}, got {_shown(value)}"
        if item.step:
            steps = (value - (item.minimum or 0)) / item.step
            if abs(steps - round(steps)) > STEP_TOLERANCE * max(1.0, abs(steps)):
                base = f" from {_shown(item.minimum)}" if item.minimum else ""
                return f"must be a multiple of {_shown(item.step)}{base}, got {_shown(value)}"
        return None
    # string, file (an asset id or a data URL), model (a model id)
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if item.allowed_values and value not in item.allowed_values:
        return f"must be {item.describe_range()}, got {_shown(value)}"
    if kind in ("string", "model"):
        return _length_problem(item, len(value), "characters")
    return None


def _length_problem(item: ModelInput, length: int, unit: str) -> str | None:
    if item.max_length is not None and length > item.max_length:
        return f"must have at most {item.max_length} {unit}, has {length}"
    if item.min_length is not None and length < item.min_length:
        return f"must have at least {item.min_length} {unit}, has {length}"
    return None


def missing(spec: ModelSpec, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(input, message) for each input the model requires that ``body`` lacks."""
    found = []
    for item in spec.inputs.values():
        if item.name in body:
            continue
        why = required_because(item, body)
        if why is not None:
            found.append((item.name, f"{spec.id} requires {item.name}{why}"))
    return found


def required_because(item: ModelInput, body: Mapping[str, Any]) -> str | None:
    """None if ``item`` is not required given ``body``; else why it is ("" if always)."""
    rules = item.required
    if rules.get("always") is True:
        return ""
    if_defined = rules.get("ifDefined")
    if isinstance(if_defined, dict):
        for other in if_defined:
            if other in body:
                return f" when {other} is given"
    if_not_defined = rules.get("ifNotDefined")
    if isinstance(if_not_defined, dict):
        for other in if_not_defined:
            if other not in body:
                return f" when {other} is not given"
    conditional = rules.get("conditional")
    if isinstance(conditional, dict) and isinstance(conditional.get("values"), dict):
        checks = [
            body.get(other) in (wanted if isinstance(wanted, list) else [wanted])
            for other, wanted in conditional["values"].items()
        ]
        met = all(checks) if conditional.get("operator") == "and" else any(checks)
        if checks and met:
            return " for the values given to " + ", ".join(conditional["values"])
    return None


# ---------------------------------------------------------------------- matching


def same_value(sent: Any, stored: Any) -> bool:
    """Whether the server's stored copy of a value is the value sent, allowing for what
    storing may do to it: a number kept as its string (``42`` and ``"42"``), an integer
    as a float (``42`` and ``42.0``), and the same within lists and mappings."""
    if sent == stored and type(sent) is type(stored):
        return True
    if isinstance(sent, bool) or isinstance(stored, bool):
        return _as_bool(sent) is not None and _as_bool(sent) == _as_bool(stored)
    sent_number, stored_number = _as_number(sent), _as_number(stored)
    if sent_number is not None and stored_number is not None:
        return _same_number(sent_number, stored_number)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(map(same_value, sent, stored))
    if isinstance(sent, dict) and isinstance(stored, dict):
        return sent.keys() == stored.keys() and all(same_value(sent[k], stored[k]) for k in sent)
    return bool(sent == stored)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _same_number(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return False
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ---------------------------------------------------------------------- helpers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value) if isinstance(value, bool | None | list | dict) else str(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {_shown(value)}"
    if isinstance(value, str):
        return f"the string {_shown(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
