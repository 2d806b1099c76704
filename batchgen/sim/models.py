"""The simulator's models: each with its own input list, as Scenario's differ.

A flux-class model takes ``width``/``height``; an Imagen-class one ``aspectRatio`` and
refuses a width; one model takes no seed.  The input lists are written in the API's
own shape (the SDK's ``ModelInput``), and the simulator checks every submission against
them with its own code (:func:`refusal`), not batchgen's, so that a mistake in one is
not repeated in the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SEED_MAX = 2**31 - 1
# The largest image the image-to-image model takes (its inputs' maxSize).
IMAGE_MAX_BYTES = 5_000_000
PROMPT: dict[str, Any] = {
    "name": "prompt",
    "type": "string",
    "label": "Prompt",
    "maxLength": 4000,
    "required": {"always": True},
}
SEED: dict[str, Any] = {"name": "seed", "type": "number", "min": 0, "max": SEED_MAX, "step": 1}
IMAGEN_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}


def _side(minimum: int, maximum: int, default: int) -> list[dict[str, Any]]:
    return [
        {"name": name, "type": "number", "min": minimum, "max": maximum, "step": 16,
         "default": default}
        for name in ("width", "height")
    ]  # fmt: skip


def _number(name: str, low: float, high: float, step: float, default: float) -> dict[str, Any]:
    return {"name": name, "type": "number", "min": low, "max": high, "step": step,
            "default": default}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimModel:
    id: str
    name: str
    privacy: str  # "private" (the team's own) or "public" (Scenario's)
    inputs: tuple[dict[str, Any], ...]
    # Pixels each aspect ratio makes, for a model that takes aspectRatio.
    ratio_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    model_type: str = "custom"

    def input(self, name: str) -> dict[str, Any] | None:
        return next((item for item in self.inputs if item["name"] == name), None)

    def defaults(self) -> dict[str, Any]:
        return {item["name"]: item["default"] for item in self.inputs if "default" in item}

    def pixels(self, body: dict[str, Any]) -> tuple[int, int]:
        """The size of the images a body makes."""
        if "aspectRatio" in body or self.ratio_sizes:
            ratio = body.get("aspectRatio") or self.defaults().get("aspectRatio", "1:1")
            return self.ratio_sizes.get(str(ratio), (1024, 1024))
        defaults = self.defaults()
        width = body.get("width", defaults.get("width", 1024))
        height = body.get("height", defaults.get("height", 1024))
        return int(width), int(height)

    def to_json(self) -> dict[str, Any]:
        """The model as ``GET /v1/models/{id}`` gives it, every field the SDK requires."""
        return {
            "id": self.id,
            "name": self.name,
            "privacy": self.privacy,
            "type": self.model_type,
            "status": "trained",
            "source": "scenario" if self.privacy == "public" else "other",
            "custom": True,
            "capabilities": ["txt2img"],
            "collectionIds": [],
            "exampleAssetIds": [],
            "tags": [],
            "trainingImagesNumber": 0,
            "createdAt": "2026-01-05T09:00:00.000Z",
            "updatedAt": "2026-06-01T09:00:00.000Z",
            "inputs": [dict(item) for item in self.inputs],
        }


CATALOG: dict[str, SimModel] = {
    model.id: model
    for model in (
        SimModel(
            id="model_bfl-flux-2-dev",
            name="FLUX.2 [dev]",
            privacy="public",
            inputs=(
                PROMPT,
                *_side(256, 2048, 1024),
                SEED,
                _number("numInferenceSteps", 1, 50, 1, 28),
                _number("guidance", 0, 10, 0.1, 2.5),
                _number("numOutputs", 1, 4, 1, 1),
            ),
        ),
        SimModel(
            id="model_imagen4-ultra",
            name="Imagen 4 Ultra",
            privacy="public",
            inputs=(
                PROMPT,
                {
                    "name": "aspectRatio",
                    "type": "string",
                    "allowedValues": list(IMAGEN_SIZES),
                    "default": "1:1",
                },
                {"name": "negativePrompt", "type": "string", "maxLength": 2000},
                SEED,
                _number("numOutputs", 1, 4, 1, 1),
            ),
            ratio_sizes=IMAGEN_SIZES,
        ),
        SimModel(
            id="model_sim-fast",
            name="Simulated fast model",
            privacy="private",
            inputs=(
                PROMPT,
                *_side(16, 4096, 1024),
                SEED,
                _number("numOutputs", 1, 8, 1, 1),
                {"name": "negativePrompt", "type": "string", "maxLength": 2000},
                _number("guidance", 0, 20, 0.1, 3.5),
                _number("numInferenceSteps", 1, 100, 1, 28),
                {"name": "style", "type": "string", "maxLength": 200},
            ),
        ),
        SimModel(
            id="model_sim-img2img",
            name="Simulated image-to-image model",
            privacy="private",
            inputs=(
                PROMPT,
                {
                    "name": "image",
                    "type": "file",
                    "kind": "image",
                    "label": "Image",
                    "maxSize": IMAGE_MAX_BYTES,
                    "required": {"always": True},
                },
                {
                    "name": "referenceImages",
                    "type": "file_array",
                    "kind": "image",
                    "label": "Reference images",
                    "maxLength": 4,
                    "maxSize": IMAGE_MAX_BYTES,
                },
                _number("strength", 0, 1, 0.05, 0.75),
                *_side(16, 4096, 1024),
                SEED,
            ),
        ),
        SimModel(
            id="model_sim-noseed",
            name="Simulated model without a seed input",
            privacy="private",
            inputs=(PROMPT, *_side(16, 4096, 1024), _number("numOutputs", 1, 4, 1, 1)),
        ),
    )
}
DEFAULT_MODELS = tuple(CATALOG)


def model_named(model_id: str) -> SimModel:
    """The catalog's model, or for any other id a private model that takes what
    ``model_sim-fast`` takes (tests list many models by made-up ids)."""
    known = CATALOG.get(model_id)
    if known is not None:
        return known
    fast = CATALOG["model_sim-fast"]
    return SimModel(id=model_id, name=model_id, privacy="private", inputs=fast.inputs)


def refusal(model: SimModel, body: Any) -> str | None:
    """The API's 400 reason for a body the model does not take, or None."""
    if not isinstance(body, dict):
        return "Body must be a JSON object"
    unknown = sorted(name for name in body if model.input(name) is None)
    if unknown:
        return f"Unknown field(s): {', '.join(unknown)}"
    for name, value in body.items():
        item = model.input(name)
        assert item is not None
        problem = _value_refusal(item, value)
        if problem:
            return f"{name}: {problem}"
    for item in model.inputs:
        if item.get("required", {}).get("always") and item["name"] not in body:
            return f"{item['name']} is required"
    prompt = body.get("prompt")
    if isinstance(prompt, str) and not prompt.strip():
        return "prompt must not be empty"
    return None


def _value_refusal(item: dict[str, Any], value: Any) -> str | None:
    kind = item["type"]
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if "min" in item and value < item["min"]:
            return f"must be at least {item['min']}"
        if "max" in item and value > item["max"]:
            return f"must be at most {item['max']}"
        step = item.get("step")
        if step:
            steps = (value - item.get("min", 0)) / step
            if not math.isclose(steps, round(steps), abs_tol=1e-9):
                return f"must be a multiple of {step}"
    elif kind == "string":
        if not isinstance(value, str):
            return "must be a string"
        if "maxLength" in item and len(value) > item["maxLength"]:
            return f"must be at most {item['maxLength']} characters"
    elif kind == "boolean" and not isinstance(value, bool):
        return "must be a boolean"
    elif kind == "file":
        if not isinstance(value, str) or not value.startswith(("asset_", "data:image/")):
            return "must reference an existing AssetId or be a data URL"
    elif kind == "file_array":
        if not isinstance(value, list) or not all(
            isinstance(one, str) and one.startswith(("asset_", "data:image/")) for one in value
        ):
            return "must be a list of existing AssetIds"
        if "maxLength" in item and len(value) > item["maxLength"]:
            return f"must hold at most {item['maxLength']} assets"
    allowed = item.get("allowedValues")
    if allowed and value not in allowed:
        return f"must be one of {', '.join(map(str, allowed))}"
    return None
