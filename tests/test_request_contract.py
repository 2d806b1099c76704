"""What batchgen sends, as the real API takes it.

The official SDK (``scenario-sdk``, generated from Scenario's OpenAPI spec) states every
request's contract: wire names and types in ``types/*_params.py``, rules in their
docstrings.  ``tests/sdk_contract.py`` reads it out; the conftest checks every request
any simulator answers in the suite against it; the simulator itself refuses, with a 400,
what the contract forbids (``batchgen/sim/api_contract.json``, the same table).  These
tests check each of those three pieces, and plant violations that must be caught.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchgen.errors import PermanentApiError
from batchgen.sim import SimConfig, Simulator, contract
from batchgen.sim.fake import client_for
from batchgen.sim.png import make_png
from tests.helpers import SIM_KEY, SIM_SECRET, World

sdk_contract = pytest.importorskip("tests.sdk_contract")
pytest.importorskip("scenario_sdk")

Write = Callable[[str, str], Path]

# Rule-like sentences of the SDK's docstrings, on parameters of endpoints batchgen uses,
# that the simulator does not enforce, each with the reason.
UNENFORCED = {
    (
        "GET /v1/models",
        "sortBy",
    ): "batchgen never sorts models by score (the sentence is about sortBy=score)",
}


def test_the_simulators_table_is_what_the_sdk_says() -> None:
    shipped = json.loads(
        resources.files("batchgen.sim").joinpath("api_contract.json").read_text("utf-8")
    )
    derived = json.loads(json.dumps(sdk_contract.contract_json(sdk_contract.SIMULATED)))
    assert shipped == derived, (
        "batchgen/sim/api_contract.json differs from the SDK installed: regenerate it with "
        "python -m tests.sdk_contract > batchgen/sim/api_contract.json"
    )


def test_every_rule_sentence_on_an_endpoint_batchgen_uses_is_read_or_explained() -> None:
    unread = {}
    for endpoint in contract.simulated():
        sdk = sdk_contract.RequestJudge().endpoint(endpoint.method, endpoint.path)
        assert sdk is not None
        for alias, doc in sdk_contract.docstrings_of(sdk).items():
            if (endpoint.name, alias) in UNENFORCED:
                continue
            if phrases := sdk_contract.unparsed_rule_phrases(alias, doc):
                unread[(endpoint.name, alias)] = phrases
    assert not unread


@pytest.mark.parametrize(
    ("doc", "rules"),
    [
        (
            'Filter ... (exclusive). Requires the sortBy parameter to be "createdAt"',
            [("requires", "createdAfter", ("sortBy",), ("createdAt",))],
        ),
        (
            'Only allowed without "status", "type", "types" and "workflowId", which sort',
            [("without", "createdAfter", ("status", "type", "types", "workflowId"), ())],
        ),
        (
            'Only allowed with "status", "type", "types" or "workflowId": without them',
            [("with_any", "createdAfter", ("status", "type", "types", "workflowId"), ())],
        ),
        (
            'The parameter "type" and "types" cannot be used together.',
            [],  # about type and types, not this parameter
        ),
        (
            "Only available when privacy=private/unlisted.",
            [("requires", "createdAfter", ("privacy",), ("private", "unlisted"))],
        ),
        ("If provided, startDate is required.", [("with_any", "createdAfter", ("startDate",), ())]),
    ],
)
def test_the_rules_read_from_a_docstring(doc: str, rules: list[tuple[Any, ...]]) -> None:
    read = sdk_contract.rules_of("createdAfter", doc, set())
    assert [(r.kind, r.param, r.others, r.values) for r in read] == rules


def _sent(sim: Simulator, method: str, path: str, **given: Any) -> tuple[int, Any]:
    """One request through batchgen's own client, in memory: (status, reason)."""
    client = client_for(sim)

    async def send() -> tuple[int, Any]:
        try:
            return await client.request(method, path, **given)
        except PermanentApiError as exc:
            return exc.status or 0, exc.reason

    return anyio.run(send)


@pytest.mark.bad_requests
@pytest.mark.parametrize(
    ("method", "path", "given", "reason"),
    [
        # The request that failed against the real API (issue 26).
        (
            "GET",
            "/v1/assets",
            {"query": {"type": "uploaded", "createdAfter": "2027-01-15T08:00:00.000Z"}},
            '"createdAfter" requires sortBy=createdAt',
        ),
        (
            "GET",
            "/v1/assets",
            {"query": {"type": "uploaded", "sortBy": "createdAt", "updatedAfter": "2027-01-15"}},
            '"updatedAfter" requires sortBy=updatedAt',
        ),
        (
            "GET",
            "/v1/assets",
            {"query": {"type": "uploaded", "types": "uploaded"}},
            "cannot be used together",
        ),
        ("GET", "/v1/assets", {"query": {"type": "pictures"}}, '"type" must be one of'),
        (
            "GET",
            "/v1/jobs",
            {"query": {"status": "success", "createdAfter": "2027-01-15T08:00:00.000Z"}},
            '"createdAfter" is not allowed with "status"',
        ),
        (
            "GET",
            "/v1/jobs",
            {"query": {"updatedAfter": "2027-01-15T08:00:00.000Z"}},
            '"updatedAfter" is only allowed with one of status',
        ),
        ("GET", "/v1/jobs", {"query": {"pageSize": "101"}}, '"pageSize" must be at most 100'),
        ("GET", "/v1/jobs", {"query": {"pageSize": "0"}}, '"pageSize" must be at least 1'),
        ("GET", "/v1/jobs", {"query": {"pageSize": "ten"}}, '"pageSize" must be an integer'),
        ("GET", "/v1/jobs", {"query": {"status": "done"}}, '"status" must be one of'),
        ("GET", "/v1/jobs", {"query": {"createdAfter": "yesterday"}}, "ISO 8601"),
        ("GET", "/v1/jobs", {"query": {"limit": "5"}}, 'unknown query parameter "limit"'),
        ("GET", "/v1/models", {"query": {"pageSize": "501"}}, "at most 500"),
        ("GET", "/v1/models", {"query": {"tags": "x"}}, '"tags" requires privacy=public'),
        ("GET", "/v1/models/model_sim-fast", {"query": {"fields": "all"}}, "unknown query"),
        ("POST", "/v1/jobs/job_1/action", {"body": {"action": "pause"}}, '"action" must be'),
        (
            "POST",
            "/v1/assets/get-bulk",
            {"body": {"assetIds": [f"asset_{n}" for n in range(201)]}},
            "at most 200",
        ),
        ("POST", "/v1/assets", {"body": {"image": "aGk="}}, '"name" is required'),
        (
            "POST",
            "/v1/assets",
            {"body": {"name": "a.png", "image": "aGk=", "dedupe": True}},
            'unknown body parameter "dedupe"',
        ),
        (
            "POST",
            "/v1/generate/custom/model_sim-fast",
            {"query": {"dryRun": "yes"}, "body": {"prompt": "p"}},
            '"dryRun" must be one of',
        ),
    ],
)
def test_the_simulator_refuses_what_the_api_refuses(
    method: str, path: str, given: dict[str, Any], reason: str
) -> None:
    sim = Simulator(SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET))
    status, said = _sent(sim, method, path, **given)
    assert status == 400 and reason in said
    assert sim.contract_refusals and not sim.jobs and not sim.uploads


@pytest.mark.bad_requests
def test_the_sdk_itself_meets_the_same_refusal(
    start_simulator: Callable[..., Simulator],
) -> None:
    """Over HTTP, from the official client: the asset list without sortBy is a 400."""
    import scenario_sdk

    sim = start_simulator()
    with scenario_sdk.Scenario(
        api_key=SIM_KEY, api_secret=SIM_SECRET, base_url=f"{sim.api_url}/v1", max_retries=0
    ) as client:
        with pytest.raises(scenario_sdk.BadRequestError) as refused:
            client.assets.list(type="uploaded", created_after="2027-01-15T08:00:00.000Z")
        listed = client.assets.list(
            type="uploaded", sort_by="createdAt", created_after="2027-01-15T08:00:00.000Z"
        )
    assert "sortBy=createdAt" in refused.value.body["reason"]
    assert listed.assets == []


@pytest.mark.bad_requests
def test_the_judge_catches_a_wrong_request_the_code_swallowed() -> None:
    """A planted violation: a wrong request whose 400 the caller ignores is still caught,
    and the judge names the code that sent it."""
    judge = sdk_contract.RequestJudge()
    contract.observers.append(judge)
    try:
        sim = Simulator(SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET))
        status, _ = _sent(sim, "GET", "/v1/assets", query={"createdAfter": "2027-01-15T08:00Z"})
        _sent(sim, "GET", "/v1/teams/team_1/quota")  # an endpoint the API does not have
    finally:
        contract.observers.remove(judge)
    assert status == 400 and judge.seen == 2
    first, second = judge.problems
    assert '"createdAfter" requires sortBy=createdAt' in first
    assert "client.py" in first and "request" in first  # the call site
    assert "the SDK knows no such endpoint" in second


def sketches(tmp_path: Path, count: int) -> None:
    """``count`` distinct images in ``tmp_path/in/``, for an image-to-image manifest."""
    (tmp_path / "in").mkdir()
    for n in range(count):
        (tmp_path / "in" / f"s{n}.png").write_bytes(make_png(16, 16, f"sketch {n}"))


def test_a_whole_run_sends_only_what_the_api_takes(write: Write, tmp_path: Path) -> None:
    """Not vacuous: the judge sees a run's every request, uploads, lost answers and their
    reconciliation among them, and finds nothing wrong."""
    judge = sdk_contract.RequestJudge()
    sketches(tmp_path, 3)
    manifest = write(
        "jobs.yaml",
        "model: model_sim-img2img\nwidth: 64\nheight: 64\njobs:\n"
        "  - {images: in/*.png, prompt: ink, count: 2}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.4, seed=4)
    contract.observers.append(judge)
    try:
        report = world.run(manifest, concurrency=3)
    finally:
        contract.observers.remove(judge)
    assert report.exit_code == 0 and world.sim.answers_lost > 0
    routes = {route for route in world.sim.requests}
    assert {"GET /v1/assets", "POST /v1/assets", "GET /v1/jobs"} <= routes
    api_requests = sum(n for route, n in world.sim.requests.items() if route != "GET cdn")
    assert judge.seen == api_requests and not judge.problems


class Killed(BaseException):
    """The process dies here: nothing after this point runs but the unwinding."""


def test_an_image_batch_killed_during_uploads_with_lost_answers_uploads_each_image_once(
    write: Write, tmp_path: Path
) -> None:
    """35% of upload answers lost, the run killed right after the server made an upload,
    again and again, then run to the end: one upload per distinct image, one job per
    unit, against the strict simulator (the lost answers are found by listing the
    uploads, which the real API takes only with sortBy=createdAt)."""
    sketches(tmp_path, 6)
    manifest = write(
        "jobs.yaml",
        "model: model_sim-img2img\nwidth: 64\nheight: 64\njobs:\n"
        "  - images: in/*.png\n    prompt: '{style}'\n    vars: {style: [ink, paint]}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.35, seed=8)
    kills = 0
    for nth in (2, 1, 1):
        made = Counter[str]()

        def kill(upload: Any, nth: int = nth, made: Counter[str] = made) -> None:
            made["n"] += 1
            if made["n"] == nth:
                raise Killed

        world.sim.on_upload_created = kill
        try:
            world.run(manifest, concurrency=4)
        except Killed:
            kills += 1
        except BaseExceptionGroup as group:  # raised inside a task group
            assert group.subgroup(Killed) is not None
            kills += 1
    world.sim.on_upload_created = None
    final = world.run(manifest, concurrency=4)
    assert final.exit_code == 0 and kills == 3 and world.sim.answers_lost > 0
    names = Counter(upload.name for upload in world.sim.uploads.values())
    assert len(names) == 6 and max(names.values()) == 1  # each image uploaded once
    assert world.sim.jobs_created == 12 == len(world.results())
    assert not world.sim.contract_refusals


def test_the_docs_list_every_endpoint_and_parameter_batchgen_sends() -> None:
    """The docs' table ("What batchgen sends", docs/running.md) names each endpoint the
    simulator serves, the SDK type that checks it, and only parameters that type has."""
    readme = (Path(__file__).parents[1] / "docs" / "running.md").read_text("utf-8")
    rows = re.findall(r"^\| `(GET|POST) (/v1/[^`]+)` \| ([^|]+) \| `(\w+)` \|$", readme, re.M)
    assert {f"{method} {path}" for method, path, _, _ in rows} == {
        endpoint.name for endpoint in contract.simulated()
    }
    judge = sdk_contract.RequestJudge()
    for method, path, sent, typed in rows:
        endpoint = judge.endpoint(method, path)
        assert endpoint is not None, path
        # An endpoint that takes no parameters is named by the type of its answer.
        takes_none = "(" not in endpoint.source and typed.endswith("Response")
        assert endpoint.source.endswith(f".{typed})") or takes_none, path
        known = set(endpoint.query) | set(endpoint.body or {})
        assert set(re.findall(r"`(\w+)`", sent)) <= known, path
