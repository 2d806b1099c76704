"""batchgen: a YAML manifest of image prompts into a folder of images, through Scenario's
generation API.  The command line is ``batchgen``; from Python::

    import batchgen
    report = batchgen.run("jobs.yaml", simulate=True)          # or: await batchgen.arun(...)
    batchgen.estimate("jobs.yaml"), batchgen.validate("jobs.yaml"), batchgen.status("output/jobs")
    batchgen.prune("output/jobs"), batchgen.verify("output/jobs", fix=True)
"""

__version__ = "0.1.0"

from .app import (  # noqa: E402 - the version is known before anything is imported
    Estimate,
    Report,
    Status,
    Validation,
    aestimate,
    arun,
    estimate,
    model,
    models,
    run,
    status,
    validate,
)
from .errors import BatchgenError, ConfigError  # noqa: E402
from .upkeep import Pruned, Verification, averify, export, gallery, prune, verify  # noqa: E402

__all__ = [
    "BatchgenError",
    "ConfigError",
    "Estimate",
    "Pruned",
    "Report",
    "Status",
    "Validation",
    "Verification",
    "__version__",
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
