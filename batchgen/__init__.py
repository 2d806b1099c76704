"""batchgen: a YAML manifest of image prompts into a folder of images, through Scenario's
generation API.  The command line is ``batchgen``; from Python::

    import batchgen
    report = batchgen.run("jobs.yaml", simulate=True)          # or: await batchgen.arun(...)
    batchgen.estimate("jobs.yaml"), batchgen.validate("jobs.yaml"), batchgen.status("output/jobs")
    batchgen.prune("output/jobs"), batchgen.verify("output/jobs", fix=True)

Each name is loaded when first used (PEP 562): the command line's rerun of a finished
batch never loads the HTTP stack it does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# Where each public name lives.
_HOMES = {
    "BatchgenError": "errors",
    "ConfigError": "errors",
    "Estimate": "report",
    "Pruned": "upkeep",
    "Report": "report",
    "Status": "report",
    "Validation": "report",
    "Verification": "upkeep",
    "Account": "team",
    "account": "app",
    "aestimate": "estimating",
    "averify": "upkeep",
    "arun": "app",
    "estimate": "app",
    "export": "upkeep",
    "gallery": "upkeep",
    "model": "app",
    "models": "app",
    "prune": "upkeep",
    "run": "app",
    "status": "app",
    "validate": "app",
    "verify": "upkeep",
}

if TYPE_CHECKING:
    from .app import (
        account,
        arun,
        estimate,
        model,
        models,
        run,
        status,
        validate,
    )
    from .errors import BatchgenError, ConfigError
    from .estimating import aestimate
    from .report import Estimate, Report, Status, Validation
    from .team import Account
    from .upkeep import Pruned, Verification, averify, export, gallery, prune, verify


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "Account",
    "BatchgenError",
    "ConfigError",
    "Estimate",
    "Pruned",
    "Report",
    "Status",
    "Validation",
    "Verification",
    "__version__",
    "account",
    "aestimate",
    "averify",
    "arun",
    "estimate",
    "export",
    "gallery",
    "model",
    "models",
    "prune",
    "run",
    "status",
    "validate",
    "verify",
]
