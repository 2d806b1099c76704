"""Run configuration: frozen records, with every default named here and nowhere else."""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CredentialsError
from .redact import register_credentials

DEFAULT_API_URL = "https://api.cloud.scenario.com"
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 1000
# The units a manifest may expand to, unless --max-units says more: a typo in vars
# (three lists of 1,000) should not start a billion-unit run.
DEFAULT_MAX_UNITS = 10_000_000
DEFAULT_POLL_INTERVAL = 2.0
# A job still not finished after this long is given up (and a cancel is attempted).
DEFAULT_JOB_TIMEOUT = 3600.0
# Jobs that end in "failure" cost money: try a unit this many times in all, then give up.
DEFAULT_JOB_ATTEMPTS = 2
# Downloads at once, by default as many as jobs in flight within these bounds: each
# download waits a round trip or more for the CDN, so fewer than the jobs ending at once
# would make downloading the slowest stage on any network but loopback.
MIN_DOWNLOAD_WORKERS = 8
MAX_DEFAULT_DOWNLOAD_WORKERS = 64
DEFAULT_DOWNLOAD_WORKERS = MIN_DOWNLOAD_WORKERS


def download_workers_for(concurrency: int) -> int:
    return max(MIN_DOWNLOAD_WORKERS, min(concurrency, MAX_DEFAULT_DOWNLOAD_WORKERS))


# A lost answer's POST is taken to have made no job only after reads of the job list
# spread over this many seconds have all missed it (the list shows new jobs late).
DEFAULT_RECONCILE_GRACE = 5.0
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_DOWNLOAD_TIMEOUT = 300.0
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_OUTPUT_ROOT = Path("output")
# A body larger than this from the API is a bug or an attack, not a job record.
MAX_API_BODY_BYTES = 16 * 1024 * 1024
# What the API's ids (jobs, assets, models) look like: they go into request paths, so
# nothing else may ("../", "?", "%2F" would reach other paths of the API's origin).
API_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}")


def is_api_id(value: object) -> bool:
    return isinstance(value, str) and API_ID.fullmatch(value) is not None and ".." not in value


MAX_ASSET_BYTES = 512 * 1024 * 1024
PROGRESS_EVERY_SECONDS = 5.0

KEY_VARIABLES = ("SCENARIO_API_KEY", "SCENARIO_SDK_API_KEY")
SECRET_VARIABLES = ("SCENARIO_API_SECRET", "SCENARIO_SDK_API_SECRET")
API_URL_VARIABLE = "SCENARIO_API_URL"
# The official SDK's name for the same, read after batchgen's own.
SDK_BASE_URL_VARIABLE = "SCENARIO_BASE_URL"
API_VERSION_PATH = "/v1"
PROJECT_VARIABLE = "SCENARIO_PROJECT_ID"
CREDENTIALS_FILE_VARIABLE = "SCENARIO_CREDENTIALS_FILE"
TRACEBACK_VARIABLE = "BATCHGEN_TRACEBACK"


@dataclass(frozen=True, slots=True)
class Credentials:
    """API key and secret. ``repr`` never shows the secret."""

    key: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        # From now on no text batchgen records holds them (see batchgen.redact).
        register_credentials(self.key, self.secret)

    def authorization_header(self) -> str:
        token = base64.b64encode(f"{self.key}:{self.secret}".encode()).decode("ascii")
        return f"Basic {token}"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """From the variables, else from the file ``$SCENARIO_CREDENTIALS_FILE`` names
        (lines ``SCENARIO_API_KEY=...`` and ``SCENARIO_API_SECRET=...``; ``#`` starts a
        comment), which only its owner may read: what cron, with no environment to
        speak of, can be given."""
        env = os.environ if environ is None else environ
        key = next((env[name] for name in KEY_VARIABLES if env.get(name)), "")
        secret = next((env[name] for name in SECRET_VARIABLES if env.get(name)), "")
        if (not key or not secret) and env.get(CREDENTIALS_FILE_VARIABLE):
            found = _read_credentials_file(Path(env[CREDENTIALS_FILE_VARIABLE]))
            key = key or next((found[name] for name in KEY_VARIABLES if found.get(name)), "")
            secret = secret or next(
                (found[name] for name in SECRET_VARIABLES if found.get(name)), ""
            )
        if not key or not secret:
            raise CredentialsError(
                "no API credentials: set SCENARIO_API_KEY and SCENARIO_API_SECRET "
                "(or SCENARIO_SDK_API_KEY/SCENARIO_SDK_API_SECRET), or name a file holding "
                f"them in {CREDENTIALS_FILE_VARIABLE}, or use --simulate"
            )
        return cls(key=key, secret=secret)


def _read_credentials_file(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(
            f"{CREDENTIALS_FILE_VARIABLE}: {path}: {exc.strerror or exc}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{CREDENTIALS_FILE_VARIABLE}: {path} may be read by others (mode "
            f"{stat.S_IMODE(mode):o}); chmod 600 it"
        )
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        if not equals:
            raise CredentialsError(f"{path}:{number}: expected NAME=value (the value is not shown)")
        found[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return found


def api_base_url(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The API's origin (and any path prefix) without the version: ``--api-url``, else
    ``$SCENARIO_API_URL``, else the SDK's ``$SCENARIO_BASE_URL``, else the real API.
    Given with or without ``/v1`` (the SDK's base URL includes it), it means the same."""
    env = os.environ if environ is None else environ
    url = given or env.get(API_URL_VARIABLE) or env.get(SDK_BASE_URL_VARIABLE) or DEFAULT_API_URL
    url = url.strip().rstrip("/")
    if url.endswith(API_VERSION_PATH):
        url = url[: -len(API_VERSION_PATH)]
    return url


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    # The account's cooldown after overuse (seconds, least and most), where it says:
    # the wait after a 429 that gives no Retry-After.
    cooldown: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class ApiSettings:
    base_url: str
    credentials: Credentials
    project_id: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
    retry: RetrySettings = RetrySettings()


# How often a run to a bucket copies its journal there (and at its start and end):
# what a run on another machine starts from if this one's disk is lost.
CHECKPOINT_SECONDS = 60.0


def cache_root() -> Path:
    """batchgen's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``):
    remote input images, and the local state of outputs in buckets."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchgen"


def default_state_root() -> Path:
    """Where the journals of outputs in buckets live, by default."""
    return cache_root() / "state"
