"""What a run is made of, checked before anything is sent: the manifest against each
model's inputs, its units (a shard's), and the request a unit would send."""

from __future__ import annotations

import json
import logging
from collections.abc import (
    Callable,
    Iterator,
)
from pathlib import Path
from typing import TypeVar

from . import config as defaults
from .backend import Backend
from .engine import EngineSettings
from .engine.submit import request_for, request_key
from .errors import (
    ApiError,
    PermanentApiError,
)
from .manifest import Manifest, Unit, iter_units
from .manifest.shard import Shard
from .retry import Request, with_retries
from .scenario.inputs import ModelSpec, model_from_json
from .scenario.preflight import Problem, Prompts, check_manifest, read_prompts
from .store.journal import JOURNAL_NAME, Journal

log = logging.getLogger(__name__)
T = TypeVar("T")


# Journal metadata under which each model's inputs are kept, as checked by the last run.
MODEL_KEY = "model:"
# Units looked up in a journal together.
UNITS_CHUNK = 500


def units_of(manifest: Manifest, shard: Shard | None) -> Iterator[Unit]:
    units = iter_units(manifest)
    return units if shard is None else shard.select(units)


async def checked_manifest(
    manifest: Manifest,
    backend: Backend,
    saved: dict[str, str] | None = None,
    max_units: int = defaults.DEFAULT_MAX_UNITS,
) -> tuple[int, dict[str, ModelSpec], list[Prompts]]:
    """Every unit checked against its model's inputs, before anything is sent: (units,
    the models' inputs).  The manifest's own errors come first: its prompts are read
    through before the API is asked anything."""
    prompts = await backend.offload(read_prompts, manifest, max_units)
    specs, problems = await model_specs(manifest, backend, saved)
    total = await backend.offload(check_manifest, manifest, specs, problems, prompts)
    return total, specs, prompts


async def model_specs(
    manifest: Manifest, backend: Backend, saved: dict[str, str] | None = None
) -> tuple[dict[str, ModelSpec], list[Problem]]:
    """Each model's inputs, one request per model, and a problem for each model the API
    does not know.  One that cannot be read for now is taken from what an earlier run
    saved, if it did."""
    wanted: dict[str, tuple[int, str]] = {}
    for entry in manifest.entries:
        wanted.setdefault(entry.model, (entry.model_line, entry.model_field))
    specs: dict[str, ModelSpec] = {}
    problems: list[Problem] = []
    for model_id, (line, where) in wanted.items():
        try:
            specs[model_id] = await with_retries(
                Request.OTHER_READ,
                lambda model_id=model_id: backend.client.get_model(model_id),  # type: ignore[misc]
                backend.settings.retry,
            )
        except PermanentApiError as exc:
            reason = "not found" if exc.status == 404 else exc.reason
            problems.append(
                Problem(
                    str(manifest.path),
                    line,
                    where,
                    f"model {model_id!r}: {reason} (batchgen models lists the models "
                    "these credentials can use)",
                )
            )
        except ApiError as exc:
            if saved and model_id in saved:
                log.warning(
                    "model %s: its inputs cannot be read now (%s); checking against those "
                    "saved by the last run",
                    model_id,
                    exc,
                )
                specs[model_id] = model_from_json(json.loads(saved[model_id]))
            else:
                raise
    return specs, problems


def saved_specs(out_dir: Path) -> dict[str, str]:
    if not (out_dir / JOURNAL_NAME).is_file():
        return {}
    journal = Journal(out_dir)
    try:
        return journal.recall(MODEL_KEY)
    finally:
        journal.close()


def sent_for(settings: EngineSettings) -> Callable[[Unit], str]:
    """The request a unit would send, as the journal keeps it, less what only the run
    that sent it knew (its images' asset ids): what finds its job in the account's list
    when the journal that had it is lost."""

    def sent_for(unit: Unit) -> str:
        body = request_for(unit, settings.seeds.get(unit.model))
        for name, _, _ in unit.inputs:
            body.pop(name, None)
        return request_key(unit.model, body)

    return sent_for
