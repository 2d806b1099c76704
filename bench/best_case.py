"""The best case: the least a client can do to turn prompts into files through the API,
and the floor batchgen's CPU per job is measured against.  POST each job (at most
``--concurrency`` in flight), ONE task listing the jobs changed since its last look
(``GET /v1/jobs?updatedAfter=``, every page), signed URLs in bulk
(``POST /v1/assets/get-bulk``), then GET and write each file.  No journal, no retries,
no checks, no resume: what batchgen does beyond this is what its guarantees cost.

    python bench/best_case.py --api-url URL --prompts FILE --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

TERMINAL = {"success", "failure", "canceled"}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--api-url", "--prompts", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--model", default="model_sim-fast")
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    done = asyncio.run(generate(args, prompts, out))
    print(f"{sum(done)} of {len(done)} succeeded")


async def generate(args: argparse.Namespace, prompts: list[str], out: Path) -> list[bool]:
    token = f"{os.environ['SCENARIO_API_KEY']}:{os.environ['SCENARIO_API_SECRET']}"
    auth = {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    api = args.api_url
    gate = asyncio.Semaphore(args.concurrency)
    ended: dict[str, asyncio.Future[dict]] = {}  # job id -> its last record
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def poller() -> None:
            since = "1970-01-01T00:00:00.000Z"
            while True:
                await asyncio.sleep(args.poll_interval)
                token, newest = None, since
                while True:
                    query = {"type": "custom", "updatedAfter": since, "pageSize": "100"}
                    if token:
                        query["paginationToken"] = token
                    async with session.get(f"{api}/v1/jobs", params=query, headers=auth) as r:
                        page = await r.json()
                    for job in page["jobs"]:
                        newest = max(newest, job["updatedAt"])
                        if job["status"] in TERMINAL:
                            waiter = ended.setdefault(job["jobId"], loop.create_future())
                            if not waiter.done():
                                waiter.set_result(job)
                    token = page.get("nextPaginationToken")
                    if not token:
                        break
                # A second back: changes made in the millisecond of the newest seen.
                moment = datetime.fromisoformat(newest.replace("Z", "+00:00"))
                since = (moment - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")

        async def one(index: int, prompt: str) -> bool:
            async with gate:
                body = {"prompt": prompt, "width": 64, "height": 64}
                url = f"{api}/v1/generate/custom/{args.model}"
                async with session.post(url, json=body, headers=auth) as response:
                    job_id = (await response.json())["job"]["jobId"]
                job = await ended.setdefault(job_id, loop.create_future())
            if job["status"] != "success":
                return False
            ids = {"assetIds": job["metadata"]["assetIds"]}
            url = f"{api}/v1/assets/get-bulk"
            async with session.post(url, json=ids, headers=auth) as response:
                assets = (await response.json())["assets"]
            for n, asset in enumerate(assets):
                async with session.get(asset["url"]) as response:
                    content = await response.read()
                with open(os.path.join(out, f"{index}_{n}.png"), "wb") as handle:  # noqa: ASYNC230
                    handle.write(content)
            return True

        watching = asyncio.create_task(poller())
        done = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        watching.cancel()
    return list(done)


if __name__ == "__main__":
    main()
