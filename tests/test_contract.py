"""The simulator against the official client: every answer batchgen relies on, as the SDK
Scenario generates from its OpenAPI spec types it.

The SDK parses leniently; here each raw answer is validated strictly against the SDK's
own pydantic model, so a field it declares required that the simulator leaves out, or
gives the wrong type, fails the test.  The simulator cannot then drift from the real API
unnoticed.  (batchgen does not use the SDK: its list iterator stops at the first empty
page even when a token follows, and it retries POSTs, which may pay twice.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchgen.sim import Simulator
from tests.conftest import SIM_KEY, SIM_SECRET

sdk = pytest.importorskip("scenario_sdk")
types = pytest.importorskip("scenario_sdk.types")


@pytest.fixture
def sdk_for() -> Iterator[Callable[[Simulator], Any]]:
    """The official client of a simulator, closed when the test ends (an open one leaves
    its connections to be collected in some later test, as unclosed sockets)."""
    opened: list[Any] = []

    def open_one(sim: Simulator) -> Any:
        # The SDK's base URL includes /v1; batchgen's takes either.
        client = sdk.Scenario(
            api_key=SIM_KEY, api_secret=SIM_SECRET, base_url=f"{sim.api_url}/v1", max_retries=0
        )
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.close()


def strictly(model: Any, payload: Any) -> Any:
    """Validate as pydantic does when it is strict about what the SDK requires."""
    return model.model_validate(payload)


def test_the_official_sdk_reads_every_answer_batchgen_relies_on(
    start_simulator: Callable[..., Simulator],
    sdk_for: Callable[[Simulator], Any],
) -> None:
    sim = start_simulator(job_seconds=0.0, jitter=0.0, normalise_input=True)
    client = sdk_for(sim)
    body = {"prompt": "a lighthouse", "width": 512, "height": 512, "numOutputs": 2}

    submitted = client.generate.with_raw_response.run_model("model_sim-fast", body=body)
    answer = strictly(types.GenerateRunModelResponse, submitted.http_response.json())
    job_id = answer.job.job_id
    assert answer.creative_units_cost == sim.jobs[job_id].cost

    dry = client.generate.with_raw_response.run_model("model_sim-fast", body=body, dry_run="true")
    assert dry.http_response.status_code == 269
    estimated = strictly(types.GenerateRunModelResponse, dry.http_response.json())
    assert estimated.creative_units_cost == answer.creative_units_cost
    assert estimated.job.job_id not in sim.jobs  # a dry run creates nothing

    job = strictly(
        types.JobRetrieveResponse,
        client.jobs.with_raw_response.retrieve(job_id).http_response.json(),
    ).job
    assert job.status == "success" and len(job.metadata.asset_ids) == 2
    assert job.metadata.input["modelId"] == "model_sim-fast"  # stored as the API may
    assert job.billing is not None and job.billing.cu_cost == answer.creative_units_cost

    listed = client.jobs.with_raw_response.list(
        type="custom", updated_after="2000-01-01T00:00:00.000Z"
    ).http_response.json()
    assert [strictly(types.JobListResponse, item).job_id for item in listed["jobs"]] == [job_id]

    asset_id = job.metadata.asset_ids[0]
    asset = strictly(
        types.AssetRetrieveResponse,
        client.assets.with_raw_response.retrieve(asset_id).http_response.json(),
    ).asset
    assert asset.properties.size > 0 and asset.url.startswith(sim.cdn_url)
    bulk = strictly(
        types.AssetGetBulkResponse,
        client.assets.with_raw_response.get_bulk(
            asset_ids=job.metadata.asset_ids
        ).http_response.json(),
    )
    assert [a.id for a in bulk.assets] == job.metadata.asset_ids

    for privacy in ("private", "public"):
        page = client.models.with_raw_response.list(privacy=privacy).http_response.json()
        found = [strictly(types.ModelListResponse, item) for item in page["models"]]
        assert found and {m.privacy for m in found} == {privacy}
    for model_id in sim.config.models:
        model = strictly(
            types.ModelRetrieveResponse,
            client.models.with_raw_response.retrieve(model_id).http_response.json(),
        ).model
        assert model.inputs and any(i.name == "prompt" for i in model.inputs)

    # And the SDK's own (lenient) reading agrees with what batchgen reads.
    assert client.jobs.retrieve(job_id).job.job_id == job_id


def test_uploads_as_the_sdk_types_them(
    start_simulator: Callable[..., Simulator], sdk_for: Callable[[Simulator], Any]
) -> None:
    import base64

    from batchgen.sim.png import make_png

    sim = start_simulator(job_seconds=0.0, jitter=0.0)
    client = sdk_for(sim)
    image = base64.b64encode(make_png(8, 8, "upload")).decode()
    uploaded = client.assets.with_raw_response.upload(name="batchgen-abc.png", image=image)
    asset = strictly(types.AssetUploadResponse, uploaded.http_response.json()).asset
    assert asset.id in sim.uploads and asset.metadata.name == "batchgen-abc.png"
    listed = client.assets.with_raw_response.list(
        type="uploaded", sort_by="createdAt", created_after="2000-01-01T00:00:00.000Z"
    ).http_response.json()
    items = [strictly(types.AssetListResponse, item) for item in listed["assets"]]
    assert [item.id for item in items] == [asset.id]
    body = {"prompt": "ink", "image": asset.id, "width": 64, "height": 64}
    made = client.generate.with_raw_response.run_model("model_sim-img2img", body=body)
    assert strictly(types.GenerateRunModelResponse, made.http_response.json()).job.job_id
    with pytest.raises(sdk.BadRequestError, match="asset_unknown not found"):
        client.generate.run_model("model_sim-img2img", body={**body, "image": "asset_unknown"})


def test_the_simulator_refuses_what_a_model_does_not_take_as_the_api_does(
    start_simulator: Callable[..., Simulator],
    sdk_for: Callable[[Simulator], Any],
) -> None:
    sim = start_simulator()
    client = sdk_for(sim)
    for model_id, body, reason in [
        ("model_imagen4-ultra", {"prompt": "p", "width": 512, "height": 512}, "width"),
        ("model_imagen4-ultra", {"prompt": "p", "aspectRatio": "2:1"}, "aspectRatio"),
        ("model_sim-noseed", {"prompt": "p", "seed": 3}, "seed"),
        ("model_bfl-flux-2-dev", {"width": 512, "height": 512}, "prompt"),
    ]:
        with pytest.raises(sdk.BadRequestError) as caught:
            client.generate.run_model(model_id, body=body)
        assert reason in caught.value.body["reason"]
    assert sim.jobs_created == 0


def test_money_as_the_sdk_types_it(
    start_simulator: Callable[..., Simulator], sdk_for: Callable[[Simulator], Any]
) -> None:
    """Discounts, costDetails and a model that does not refund its failures, in the
    shapes the SDK declares: what batchgen's ledger reads."""
    sim = start_simulator(
        job_seconds=0.0,
        jitter=0.0,
        failure_rate=1.0,
        discount=0.25,
        models=("model_sim-fast", "model_sim-norefund"),
        no_refund_models=("model_sim-norefund",),
    )
    client = sdk_for(sim)
    body = {"prompt": "a lighthouse", "width": 1024, "height": 1024}
    for model, refunded in (("model_sim-fast", True), ("model_sim-norefund", False)):
        made = client.generate.with_raw_response.run_model(model, body=body)
        answer = strictly(types.GenerateRunModelResponse, made.http_response.json())
        assert answer.creative_units_cost == 3 and answer.creative_units_discount == 1
        assert answer.cost_details is not None
        assert answer.cost_details.custom_generation == answer.creative_units_cost
        job = strictly(
            types.JobRetrieveResponse,
            client.jobs.with_raw_response.retrieve(answer.job.job_id).http_response.json(),
        ).job
        assert job.status == "failure" and job.billing is not None
        assert job.billing.cu_cost == 3 and job.billing.cu_discount == 1
        assert bool(job.billing.disable_refund) is not refunded
    assert sim.charged == 6 and sim.spent == 3  # the refundable one given back


def test_the_account_as_the_sdk_types_it(
    start_simulator: Callable[..., Simulator], sdk_for: Callable[[Simulator], Any]
) -> None:
    """Teams, limits and use by model, in the shapes the SDK declares: what batchgen
    reads of the account (its parallel jobs, its creative units, its use)."""
    sim = start_simulator(
        job_seconds=0.0, jitter=0.0, in_flight_limit=12, credits=500, one_shot_credits=50
    )
    client = sdk_for(sim)
    client.generate.run_model("model_sim-fast", body={"prompt": "p", "width": 1024, "height": 1024})
    teams = strictly(
        types.TeamListResponse, client.teams.with_raw_response.list().http_response.json()
    )
    (team,) = teams.teams
    assert team.context.user_role == "key"
    raw = client.teams.with_raw_response.retrieve_limits(team.id).http_response.json()
    limits = strictly(types.TeamRetrieveLimitsResponse, raw)
    assert limits.limits.parallel_custom_jobs == 12 and limits.limits.creative_units == 500
    assert limits.values.creative_units == sim.spent == 4
    assert [one.remaining for one in limits.one_shot_creative_units] == [100, 50]
    used = client.usages.with_raw_response.list(
        type=["model-usages"],
        start_date=limits.period.start,
        end_date=limits.period.end,
        team_id=team.id,
    ).http_response.json()
    (model,) = strictly(types.UsageListResponse, used).api_model_usages or []
    assert model.api_model_id == "model_sim-fast" and model.points[0].cost == 4


def test_the_quality_gate_as_the_sdk_types_it(
    start_simulator: Callable[..., Simulator], sdk_for: Callable[[Simulator], Any]
) -> None:
    """The gate's answer, its dry run, and the verdict kept on the asset: in the SDK's
    shapes, the verdict drawn from the image's bytes."""
    sim = start_simulator(job_seconds=0.0, jitter=0.0)
    client = sdk_for(sim)
    made = client.generate.run_model(
        "model_sim-fast", body={"prompt": "p", "width": 64, "height": 64}
    )
    job = client.jobs.retrieve(made.job.job_id).job
    (asset_id,) = job.metadata.asset_ids
    dry = client.generate.with_raw_response.quality_gate(image=asset_id, dry_run="true")
    assert dry.http_response.status_code == 269 and sim.gate_calls[asset_id] == 0
    raw = client.generate.with_raw_response.quality_gate(image=asset_id, sensitivity="high")
    answer = strictly(types.GenerateQualityGateResponse, raw.http_response.json())
    expected = sim.quality_of(sim.assets[asset_id].content(), "high")
    assert (answer.overall_score, answer.verdict) == expected
    assert answer.creative_units_cost == 1 and answer.cost_details is not None
    kept = strictly(
        types.AssetRetrieveResponse,
        client.assets.with_raw_response.retrieve(asset_id).http_response.json(),
    ).asset.quality_gate
    assert kept is not None and (kept.overall_score, kept.verdict) == expected
    assert sim.gate_calls[asset_id] == 1 and sim.spent == 1 + 1  # the job, the gate
