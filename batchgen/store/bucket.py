"""Outputs in object storage: ``s3://bucket/prefix``, ``gs://bucket/prefix`` or any
S3-compatible store (``endpoint_url``), through obstore.

Why obstore (measured in ``bench/bench.py --only bucket``, and in the commit that chose
it): its calls are Rust futures awaited on the event loop itself, with no thread hop per
object (s3fs runs aiobotocore on a loop of its own in a thread for sync callers), it
has conditional writes built in (``mode="create"`` is ``If-None-Match: *``; a mode of
``{"e_tag": ...}`` is ``If-Match``, which the lease needs), and it reads each store's
standard credential chain (``AWS_*`` variables, web identity, instance and container
roles; GCS application default credentials) with no other package.

Every call goes through :class:`Bucket`, the one place store errors are converted to
:class:`~batchgen.errors.ObjectStoreError` (``from exc``), told apart as *transient*
(503 SlowDown, 429, 5xx, a dropped connection: retried by the run's table) or not
(credentials refused, no such bucket: the run stops).  Messages name the object's URL
and the store's answer, never a credential.  obstore's own retries are off: the retry
table and the adaptive concurrency (:class:`WriteSlots`) decide, as for the API.

``memory://name/prefix`` is a store in this process (one per name), for tests and for
trying a run out.
"""

from __future__ import annotations

import difflib
import hashlib
import mimetypes
import os
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..errors import ConfigError, ObjectStoreError
from ..redact import clean, register, register_url

SCHEMES = ("s3", "gs", "gcs", "memory")
# Where batchgen keeps what it needs under an output prefix: the journal's checkpoint
# and the lease.  Not part of the dataset (``datasets`` skips names starting with _).
STATE_PREFIX = "_batchgen"
# Object metadata written with every image: what a later run or ``verify`` checks.
SHA256_ATTRIBUTE = "sha256"
UNIT_ATTRIBUTE = "unit"
# At most this many writes to the store at once (the engine's WriteSlots lowers it
# while the store throttles).
MAX_WRITES = 64
# Files (views, the journal's checkpoint) move in parts of this size.
FILE_CHUNK = 5 * 1024 * 1024

# The names ``datasets`` and fsspec (s3fs, gcsfs) use for storage options, as obstore
# knows them; obstore's own names are taken as they are.
_S3_ALIASES = {
    "endpoint_url": "endpoint",
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "region_name": "region",
    "anon": "skip_signature",
    "profile_name": "profile",
}
_S3_NAMES = {
    "endpoint",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "region",
    "skip_signature",
    "virtual_hosted_style_request",
    "checksum_algorithm",
    "request_payer",
    "unsigned_payload",
    "s3_express",
    "conditional_put",
    "imdsv1_fallback",
    "metadata_endpoint",
    "profile",
}
_GCS_ALIASES = {"token": "service_account_path", "project": "project_id"}
_GCS_NAMES = {"service_account_path", "service_account_key", "application_credentials"}
_SECRET_NAMES = {"secret", "secret_access_key", "token", "session_token", "service_account_key"}
_BOOLEAN_NAMES = {
    "virtual_hosted_style_request",
    "unsigned_payload",
    "s3_express",
    "imdsv1_fallback",
    "request_payer",
}

_memory_stores: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class BucketUrl:
    scheme: str
    bucket: str
    prefix: str  # without a leading or trailing slash; may be empty

    @classmethod
    def parse(cls, text: str) -> BucketUrl | None:
        """The URL's parts, or None if ``text`` is not an object storage URL (a path)."""
        match = re.fullmatch(r"([a-z0-9]+)://([^/]*)(?:/(.*))?", text.strip())
        if match is None:
            return None
        scheme, bucket, prefix = match[1], match[2], (match[3] or "").strip("/")
        if "@" in bucket:
            register_url(f"{scheme}://{bucket}")
            raise ConfigError(
                f"--out: {scheme}://…@{bucket.rpartition('@')[2]}: a bucket URL holds no "
                "credentials; give them with --storage-option (or the store's variables)"
            )
        if scheme not in SCHEMES:
            raise ConfigError(
                f"--out: {text}: batchgen writes to {', '.join(s + '://' for s in SCHEMES)} "
                "or a local directory"
            )
        if not bucket:
            raise ConfigError(f"--out: {text}: no bucket named")
        return cls("gs" if scheme == "gcs" else scheme, bucket, prefix)

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def child(self, name: str) -> BucketUrl:
        return BucketUrl(self.scheme, self.bucket, self.key(name))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


def is_bucket_url(text: object) -> bool:
    return isinstance(text, str) and re.match(r"[a-z0-9]+://", text.strip()) is not None


def parse_storage_options(given: list[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``KEY=VALUE`` pairs (the command line's) or a mapping, as a dict."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        mapped = {str(k): str(v) for k, v in given.items()}
        keep_secret(mapped)
        return mapped
    options: dict[str, str] = {}
    for pair in given:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # Never the text itself: a value typed with the wrong separator is a secret.
            name = re.split(r"[:\s]", pair.strip(), maxsplit=1)[0][:40] or "…"
            raise ConfigError(f"--storage-option: {name}…: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    keep_secret(options)
    return options


def keep_secret(options: Mapping[str, str]) -> None:
    """Register the options' secrets (keys, tokens, a URL's password) with
    :mod:`batchgen.redact`: no text batchgen records holds them from now on."""
    for name, value in options.items():
        if name in _SECRET_NAMES or "secret" in name or "token" in name or "password" in name:
            register(value)
        register_url(value)


def store_config(url: BucketUrl, options: Mapping[str, str]) -> dict[str, Any]:
    """The options as obstore's configuration for ``url``'s store (pure)."""
    if url.scheme == "memory":
        if options:
            raise ConfigError("--storage-option: a memory:// store takes none")
        return {}
    aliases, names = (_S3_ALIASES, _S3_NAMES) if url.scheme == "s3" else (_GCS_ALIASES, _GCS_NAMES)
    config: dict[str, Any] = {}
    for given, value in options.items():
        name = aliases.get(given, given)
        if name not in names:
            known = sorted(set(aliases) | names)
            close = difflib.get_close_matches(given, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"--storage-option: {given}: not an option of {url.scheme}:// stores{hint}"
            )
        if name == "skip_signature":
            value = "true" if value.lower() in ("1", "true", "yes") else "false"
        if name in _BOOLEAN_NAMES and value.lower() not in ("true", "false"):
            raise ConfigError(f"--storage-option: {given}={value!r}: true or false")
        if name == "endpoint" and not re.match(r"https?://[^/\s]+", value):
            raise ConfigError(
                f"--storage-option: {given}: not an http(s) URL (https://host[:port])"
            )
        config[name] = value
    return config


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:
        raise ConfigError(
            "an output in a bucket needs obstore: pip install 'scenario-batchgen[cloud]'"
        ) from None
    return obstore


# How often blocking code (an export, a gallery: no retry table of their own around
# each call) lets the store retry a request that failed and may pass.
BLOCKING_RETRIES = 10


def open_store(url: BucketUrl, options: Mapping[str, str], *, store_retries: int = 0) -> Any:
    """The obstore store of ``url``'s bucket (its prefix is applied by :class:`Bucket`).
    Credentials not given as options come from the store's standard chain.  A run
    retries by its own table (``store_retries`` 0); blocking code (an export) lets the
    store retry by itself."""
    config = store_config(url, options)
    _obstore()
    if url.scheme == "memory":
        from obstore.store import MemoryStore

        return _memory_stores.setdefault(url.bucket, MemoryStore())
    no_retries: dict[str, Any] = {"max_retries": store_retries}
    if store_retries == 0:
        no_retries["retry_timeout"] = timedelta(seconds=0)
    client: dict[str, Any] = {"timeout": timedelta(seconds=120)}
    endpoint = str(config.get("endpoint", ""))
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    try:
        if url.scheme == "s3":
            from obstore.store import S3Store

            config.setdefault("checksum_algorithm", "sha256")
            provider = _profile_credentials(config)
            return S3Store(
                url.bucket,
                config=config,  # type: ignore[arg-type]  # checked by store_config
                client_options=client,  # type: ignore[arg-type]
                retry_config=no_retries,  # type: ignore[arg-type]
                credential_provider=provider,
            )
        from obstore.store import GCSStore

        return GCSStore(
            url.bucket,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config=no_retries,  # type: ignore[arg-type]
        )
    except BaseException as exc:
        # The store's own words (a Rust panic, among them, is a BaseException).
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"{url}: {_first_line(exc)}") from exc


def _profile_credentials(config: dict[str, Any]) -> Any:
    """For a named AWS profile (``--storage-option profile=…``, or ``AWS_PROFILE`` with
    no keys in the environment), boto3's own chain for it: obstore reads the environment,
    web identity and instance roles, not ``~/.aws`` profiles.  None otherwise."""
    profile = config.pop("profile", None)
    if profile is None and "access_key_id" not in config:
        if "AWS_ACCESS_KEY_ID" not in os.environ:
            profile = os.environ.get("AWS_PROFILE")
    if not profile:
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise ConfigError(
            f"the AWS profile {profile!r} is read with boto3: pip install boto3 "
            "(or give the keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from None
    try:
        session = boto3.Session(profile_name=profile)
    except Exception as exc:  # botocore's ProfileNotFound and kin
        raise ConfigError(f"AWS profile {profile!r}: {_first_line(exc)}") from exc
    if "region" not in config and session.region_name:
        config["region"] = session.region_name
    return Boto3CredentialProvider(session)


@dataclass(frozen=True, slots=True)
class Found:
    """An object as the store describes it."""

    key: str
    size: int
    e_tag: str | None
    last_modified: datetime
    attributes: Mapping[str, str]


class Slots(Protocol):
    """How many writes go to the store at once, told of each throttle and success."""

    limiter: anyio.CapacityLimiter

    def throttled(self) -> None: ...

    def succeeded(self) -> None: ...


class FixedSlots:
    def __init__(self, ceiling: int = MAX_WRITES) -> None:
        self.limiter = anyio.CapacityLimiter(ceiling)

    def throttled(self) -> None:
        pass

    def succeeded(self) -> None:
        pass


class Bucket:
    """One output prefix in a store.  ``blocking``: call obstore's synchronous API (for
    tests on trio's virtual clock, where asyncio futures cannot be awaited)."""

    def __init__(self, url: BucketUrl, store: Any, *, blocking: bool = False) -> None:
        # Public: a run learns only once its backend is open whether it runs on
        # virtual time.
        self.url = url
        self._store = store
        self._obstore = _obstore()
        self.blocking = blocking
        self.slots: Slots = FixedSlots()

    @classmethod
    def open(
        cls,
        url: BucketUrl,
        options: Mapping[str, str] | None = None,
        *,
        blocking: bool = False,
        store_retries: int = 0,
    ) -> Bucket:
        store = open_store(url, options or {}, store_retries=store_retries)
        return cls(url, store, blocking=blocking)

    def child(self, name: str) -> Bucket:
        bucket = Bucket(self.url.child(name), self._store, blocking=self.blocking)
        bucket.slots = self.slots
        return bucket

    def location(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    # ------------------------------------------------------------------ writes

    async def create(
        self, relative: str, data: bytes | memoryview, attributes: Mapping[str, str] | None = None
    ) -> str | None:
        """Write an object that must not exist yet (``If-None-Match: *``): its ETag, or
        None if the name is taken."""
        try:
            result = await self._put(relative, data, mode="create", attributes=attributes)
        except self._obstore.exceptions.AlreadyExistsError:
            return None
        except self._obstore.exceptions.PreconditionError:
            return None
        return result

    async def replace(self, relative: str, data: bytes, e_tag: str) -> str | None:
        """Overwrite an object only if it still has ``e_tag`` (``If-Match``): its new
        ETag, or None if it changed (or went) since."""
        try:
            return await self._put(relative, data, mode={"e_tag": e_tag})
        except (
            self._obstore.exceptions.PreconditionError,
            self._obstore.exceptions.NotFoundError,
        ):
            return None

    async def put(
        self,
        relative: str,
        data: bytes | memoryview,
        attributes: Mapping[str, str] | None = None,
    ) -> str | None:
        """Write (or overwrite) an object: its ETag."""
        return await self._put(relative, data, mode="overwrite", attributes=attributes)

    async def put_file(
        self, relative: str, path: Path, attributes: Mapping[str, str] | None = None
    ) -> str | None:
        """Write (or overwrite) an object from a local file, streamed: a view, a
        journal of a million units, a large image, is never held in memory whole."""
        return await self._put(relative, path, mode="overwrite", attributes=attributes)

    async def _put(
        self,
        relative: str,
        data: bytes | memoryview | Path,
        *,
        mode: Any,
        attributes: Mapping[str, str] | None = None,
    ) -> str | None:
        key = self.url.key(relative)
        options: dict[str, Any] = {"mode": mode}
        if isinstance(data, Path):
            # In parts of 5 MB, two at a time: what a file costs in memory, at most.
            options |= {"chunk_size": FILE_CHUNK, "max_concurrency": 2}
        if attributes:
            options["attributes"] = dict(attributes)
        async with self.slots.limiter:
            try:
                if self.blocking:
                    result = self._obstore.put(self._store, key, data, **options)
                else:
                    result = await self._obstore.put_async(self._store, key, data, **options)
            except (
                self._obstore.exceptions.AlreadyExistsError,
                self._obstore.exceptions.PreconditionError,
                self._obstore.exceptions.NotFoundError,
            ):
                self.slots.succeeded()  # an answer, not a throttle
                raise
            except Exception as exc:
                error = self._converted(exc, relative, "write")
                if error.transient:
                    self.slots.throttled()
                raise error from exc
        self.slots.succeeded()
        e_tag = result.get("e_tag")
        return str(e_tag) if e_tag is not None else None

    async def copy(self, relative: str, to: str) -> bool:
        """The object copied within the store (its bytes never leave it; its metadata
        goes with it), replacing whatever ``to`` holds; False if there is none."""
        source, target = self.url.key(relative), self.url.key(to)
        try:
            if self.blocking:
                self._obstore.copy(self._store, source, target, overwrite=True)
            else:
                await self._obstore.copy_async(self._store, source, target, overwrite=True)
        except (FileNotFoundError, self._obstore.exceptions.NotFoundError):
            return False
        except Exception as exc:
            raise self._converted(exc, relative, "copy") from exc
        return True

    async def delete(self, relative: str) -> None:
        key = self.url.key(relative)
        try:
            if self.blocking:
                self._obstore.delete(self._store, key)
            else:
                await self._obstore.delete_async(self._store, key)
        except self._obstore.exceptions.NotFoundError:
            return
        except Exception as exc:
            raise self._converted(exc, relative, "delete") from exc

    # ------------------------------------------------------------------ reads

    async def head(self, relative: str) -> Found | None:
        """The object's size, ETag, time and metadata; None if there is none."""
        key = self.url.key(relative)
        try:
            if self.blocking:
                result = self._obstore.get(self._store, key, options={"head": True})
            else:
                result = await self._obstore.get_async(self._store, key, options={"head": True})
        except (FileNotFoundError, self._obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:
            raise self._converted(exc, relative, "read") from exc
        return _found(result.meta, result.attributes)

    async def read(self, relative: str) -> tuple[bytes, Found] | None:
        """The object's bytes and description; None if there is none."""
        key = self.url.key(relative)
        try:
            if self.blocking:
                result = self._obstore.get(self._store, key)
                data = bytes(result.bytes())
            else:
                result = await self._obstore.get_async(self._store, key)
                data = bytes(await result.bytes_async())
        except (FileNotFoundError, self._obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:
            raise self._converted(exc, relative, "read") from exc
        return data, _found(result.meta, result.attributes)

    async def download(self, relative: str, destination: Path) -> Found | None:
        """The object, streamed into ``destination`` (replaced once whole); None if
        there is none."""
        key = self.url.key(relative)
        partial = destination.with_name(f".{destination.name}.download")
        try:
            with partial.open("wb") as handle:
                if self.blocking:
                    result = self._obstore.get(self._store, key)
                    for chunk in result.stream(min_chunk_size=FILE_CHUNK):
                        handle.write(chunk)
                else:
                    result = await self._obstore.get_async(self._store, key)
                    async for chunk in result.stream(min_chunk_size=FILE_CHUNK):
                        handle.write(chunk)  # rare (a restore), and each chunk is large
            partial.replace(destination)
        except (FileNotFoundError, self._obstore.exceptions.NotFoundError):
            return None
        except OSError:
            raise
        except Exception as exc:
            raise self._converted(exc, relative, "read") from exc
        finally:
            partial.unlink(missing_ok=True)
        return _found(result.meta, result.attributes)

    def put_file_now(self, relative: str, path: Path) -> None:
        """Write an object from a local file, with the calling thread (an export)."""
        options = {"chunk_size": FILE_CHUNK, "max_concurrency": 2}
        try:
            self._obstore.put(self._store, self.url.key(relative), path, **options)
        except Exception as exc:
            raise self._converted(exc, relative, "write") from exc

    def put_now(self, relative: str, data: bytes) -> None:
        """Write (or overwrite) a small object, with the calling thread (a gallery)."""
        try:
            self._obstore.put(self._store, self.url.key(relative), data)
        except Exception as exc:
            raise self._converted(exc, relative, "write") from exc

    def delete_now(self, relative: str) -> None:
        try:
            self._obstore.delete(self._store, self.url.key(relative))
        except self._obstore.exceptions.NotFoundError:
            return
        except Exception as exc:
            raise self._converted(exc, relative, "delete") from exc

    def names_now(self, relative: str) -> set[str]:
        """The names of the objects right under ``relative`` (with the calling thread)."""
        prefix = self.url.key(relative)
        try:
            found = self._obstore.list_with_delimiter(self._store, prefix)
        except Exception as exc:
            raise self._converted(exc, relative, "list") from exc
        return {str(meta["path"]).rsplit("/", 1)[-1] for meta in found["objects"]}

    def is_empty_now(self) -> bool:
        """Whether nothing is under the prefix (with the calling thread)."""
        try:
            for page in self._obstore.list(self._store, self.url.prefix or None, chunk_size=1):
                if page:
                    return False
        except Exception as exc:
            raise self._converted(exc, "", "list") from exc
        return True

    def read_now(self, relative: str) -> bytes | None:
        """The object's bytes, read with the calling thread (for blocking code such as
        an export); None if there is none."""
        try:
            return bytes(self._obstore.get(self._store, self.url.key(relative)).bytes())
        except (FileNotFoundError, self._obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:
            raise self._converted(exc, relative, "read") from exc

    async def listing(self, relative: str = "") -> AsyncGenerator[list[Found], None]:
        """Every object under ``relative``, a page at a time."""
        key = self.url.key(relative) if relative else self.url.prefix
        pages = self._obstore.list(self._store, key or None, chunk_size=1000)
        try:
            if self.blocking:
                for page in pages:
                    yield [_found(meta, {}) for meta in page]
            else:
                async for page in pages:
                    yield [_found(meta, {}) for meta in page]
        except Exception as exc:
            raise self._converted(exc, relative, "list") from exc

    async def folders(self) -> list[str]:
        """The names of the folders right under the prefix (``shard-0-of-4``, …)."""
        prefix = self.url.prefix or None
        try:
            if self.blocking:
                found = self._obstore.list_with_delimiter(self._store, prefix)
            else:
                found = await self._obstore.list_with_delimiter_async(self._store, prefix)
        except Exception as exc:
            raise self._converted(exc, "", "list") from exc
        return [self.relative(str(name)).strip("/") for name in found["common_prefixes"]]

    def relative(self, key: str) -> str:
        return key[len(self.url.prefix) + 1 :] if self.url.prefix else key

    def _converted(self, exc: Exception, relative: str, what: str) -> ObjectStoreError:
        where = self.location(relative) if relative else str(self.url)
        return object_store_error(exc, where, what, self._obstore.exceptions)


def object_store_error(exc: Exception, where: str, what: str, kinds: Any) -> ObjectStoreError:
    """One line that says what the store answered, and whether trying again may help."""
    text = str(exc)
    status_match = re.search(r"status code: (\d{3})", text) or re.search(r"\b(\d{3}) [A-Z]", text)
    status = int(status_match[1]) if status_match else None
    code_match = re.search(r"<Code>([^<]+)</Code>", text)
    code = code_match[1] if code_match else None
    if isinstance(exc, kinds.PermissionDeniedError | kinds.UnauthenticatedError) or status in (
        401,
        403,
    ):
        reason = code or "access denied"
        return ObjectStoreError(
            f"{where}: the store refused the credentials ({reason}); they come from "
            "--storage-option or the store's standard chain (AWS_* variables, profile, "
            "role; GCS application default credentials)",
            transient=False,
        )
    if status == 404 or code == "NoSuchBucket":
        return ObjectStoreError(f"{where}: {code or 'not found'}", transient=False)
    detail = " ".join(part for part in (str(status) if status else "", code or "") if part)
    if status is None and code is None:
        # The store's own first line (a URL and what went wrong; requests are signed in
        # headers, which it does not repeat).
        detail = f"{type(exc).__name__}: {_first_line(exc)[:200]}"
    transient = status is None or status in (408, 409, 429) or status >= 500
    return ObjectStoreError(f"{where}: {what} failed ({detail})", transient=transient)


def _found(meta: Mapping[str, Any], attributes: Mapping[str, Any]) -> Found:
    e_tag = meta.get("e_tag")
    return Found(
        key=str(meta["path"]),
        size=int(meta["size"]),
        e_tag=str(e_tag) if e_tag is not None else None,
        last_modified=meta["last_modified"],
        attributes={str(k): str(v) for k, v in attributes.items()},
    )


def image_attributes(relative: str, sha256: str, unit_id: str | None) -> dict[str, str]:
    attributes = {SHA256_ATTRIBUTE: sha256}
    kind, _ = mimetypes.guess_type(relative)
    if kind:
        attributes["Content-Type"] = kind
    if unit_id:
        attributes[UNIT_ATTRIBUTE] = unit_id
    return attributes


def state_key(url: BucketUrl) -> str:
    """A local state directory's name for an output URL: readable, and its own."""
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{url.bucket}-{url.prefix}").strip("-")[:60]
    return f"{readable}-{digest}"


def _first_line(exc: BaseException) -> str:
    return clean((str(exc).strip().splitlines() or [type(exc).__name__])[0])


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """The options as they may be shown: secrets as ``***``."""
    return {k: "***" if k in _SECRET_NAMES else v for k, v in options.items()}
