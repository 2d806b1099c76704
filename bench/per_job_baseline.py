"""The quick-start loop, made concurrent with a semaphore: the baseline batchgen is
measured against.  Each unit POSTs its job, then GETs it every ``--poll-interval``
seconds until it ends, then GETs each asset and downloads it.  No journal, no retries.

    python bench/per_job_baseline.py --api-url URL --prompts FILE --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from pathlib import Path

import aiohttp

TERMINAL = {"success", "failure", "canceled"}


async def one(
    session: aiohttp.ClientSession,
    api: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    gate: asyncio.Semaphore,
    index: int,
    prompt: str,
) -> bool:
    async with gate:
        body = {"prompt": prompt, "width": args.width, "height": args.height}
        async with session.post(
            f"{api}/v1/generate/custom/{args.model}", json=body, headers=headers
        ) as response:
            job = (await response.json())["job"]
        job_id = job.get("jobId") or job.get("id")
        while job["status"] not in TERMINAL:
            await asyncio.sleep(args.poll_interval)
            async with session.get(f"{api}/v1/jobs/{job_id}", headers=headers) as response:
                job = (await response.json())["job"]
    if job["status"] != "success":
        return False
    for n, asset_id in enumerate(job["metadata"]["assetIds"]):
        async with session.get(f"{api}/v1/assets/{asset_id}", headers=headers) as response:
            url = (await response.json())["asset"]["url"]
        async with session.get(url) as response:
            content = await response.read()
        (args.out / f"{index}_{n}.png").write_bytes(content)
    return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="model_sim-fast")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    token = f"{os.environ['SCENARIO_API_KEY']}:{os.environ['SCENARIO_API_SECRET']}"
    headers = {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    prompts = args.prompts.read_text(encoding="utf-8").splitlines()
    gate = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        done = await asyncio.gather(
            *(one(session, args.api_url, headers, args, gate, i, p) for i, p in enumerate(prompts))
        )
    print(f"{sum(done)} of {len(done)} succeeded")


if __name__ == "__main__":
    asyncio.run(main())
