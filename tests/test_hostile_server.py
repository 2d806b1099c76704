"""A hostile server, and secrets typed where they should not be: nothing secret echoed,
nothing a terminal would act on.

Some gateways reflect the request's headers in their error text: the API secret would
then be in every error batchgen shows and keeps.  The simulator plants it (with
terminal escapes and a line that forges a log entry) in the 400 it answers; it must be
found in none of batchgen's outputs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen import redact
from batchgen.cli import main
from batchgen.errors import ConfigError
from batchgen.sim import Simulator
from batchgen.store.bucket import BucketUrl, parse_storage_options, store_config
from tests.helpers import SIM_KEY, SIM_SECRET

Write = Callable[[str, str], Path]

MANIFEST = (
    "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    "  - {prompt: fine, count: 2}\n  - {prompt: a forbidden one}\n"
)
TOKEN = base64.b64encode(f"{SIM_KEY}:{SIM_SECRET}".encode()).decode()


def outputs_of(out: Path, log: Path, captured: pytest.CaptureFixture[str]) -> dict[str, str]:
    said = captured.readouterr()
    found = {"stdout": said.out, "stderr": said.err, "log": log.read_text("utf-8")}
    for name in ("results.jsonl", "metadata.jsonl", "journal.sqlite3", "journal.sqlite3-wal"):
        if (out / name).is_file():
            found[name] = (out / name).read_bytes().decode("utf-8", "replace")
    return found


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_secret_the_server_reflects_is_in_none_of_batchgens_outputs(
    write: Write,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    sim = start_simulator(job_seconds=0.05, reflect_headers=True)
    manifest = write("jobs.yaml", MANIFEST)
    out, log = tmp_path / "out", tmp_path / "run.log"
    extra = ["--json"] if form == "json" else []
    code = main(
        ["run", str(manifest), "--out", str(out), "--api-url", sim.api_url,
         "--poll-interval", "0.02", "--log-file", str(log), "--log-format", form, *extra]
    )  # fmt: skip
    assert code == 1  # the refused prompt failed
    found = outputs_of(out, log, capsys)
    assert "results.jsonl" in found and "journal.sqlite3" in found
    for where, text in found.items():
        assert SIM_SECRET not in text, where
        assert TOKEN not in text, where
        if not where.startswith("journal"):  # SQLite's own bytes hold any byte
            assert "\x1b" not in text and "\r" not in text, where
    # The server's words are shown, escaped: the forged entry is not a line of its own.
    assert "rejected by content moderation" in found["log"]
    assert not any(line.startswith("2027-01-15T08:00:00Z") for line in found["log"].splitlines())
    failed = [json.loads(line) for line in found["results.jsonl"].splitlines()]
    (refused,) = [r for r in failed if r["status"] == "failure"]
    assert "***" in refused["error"] and "\\x1b" in refused["error"]


def test_redact_takes_out_each_form_of_a_secret() -> None:
    redact.register_credentials("key-1234", "hunter2-secret/+=")
    text = (
        "Authorization: Basic a2V5LTEyMzQ6aHVudGVyMi1zZWNyZXQvKz0= then hunter2-secret/+= "
        "and hunter2-secret%2F%2B%3D"
    )
    assert redact.redact(text) == "Authorization: Basic *** then *** and ***"
    assert redact.printable("a\x1b[31mb\rc\nd\x07") == "a\\x1b[31mb\\rc\\nd\\x07"


def test_a_storage_option_typed_wrong_never_shows_its_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_storage_options(["secret_access_key:AKIAVERYSECRETVALUE"])
    assert "AKIAVERYSECRETVALUE" not in str(caught.value)
    assert str(caught.value) == "--storage-option: secret_access_key…: expected KEY=VALUE"
    parse_storage_options(["secret_access_key=AnotherSecretValue9"])
    assert redact.redact("the store said: AnotherSecretValue9") == "the store said: ***"


def test_a_bucket_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        BucketUrl.parse("s3://AKIDEXAMPLE:wJalrXUtnFEMIK7MDENG@bucket/prefix")
    said = str(caught.value)
    assert "wJalrXUtnFEMIK7MDENG" not in said and "--storage-option" in said
    assert redact.redact("wJalrXUtnFEMIK7MDENG") == "***"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("virtual_hosted_style_request=maybe", "true or false"),
        ("endpoint=not a url", "not an http"),
        ("endpoint_url=ftp://host", "not an http"),
    ],
)
def test_storage_options_are_checked_in_one_line(option: str, message: str) -> None:
    url = BucketUrl.parse("s3://bucket/prefix")
    assert url is not None
    with pytest.raises(ConfigError, match=message) as caught:
        store_config(url, parse_storage_options([option]))
    assert "\n" not in str(caught.value)


def test_an_endpoints_password_is_kept_out_of_what_is_shown() -> None:
    parse_storage_options(["endpoint_url=http://minio:Pa55word-Minio@127.0.0.1:9"])
    assert "Pa55word-Minio" not in redact.redact("error for http://minio:Pa55word-Minio@x")
