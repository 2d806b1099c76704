"""batchgen writing to a bucket, beside the store's own raw PUT rate: one run, one S3
server (moto's server mode, in a process of its own on loopback), figures as ratios.

    python bench/bucket.py                 # the issue's settings
    python bench/bucket.py --units 2000 --memory-units 2000 10000

Scenarios, each a child process (its CPU and peak RSS from the kernel):
  raw        a plain loop of PUTs of the run's image bytes, --concurrency at a time,
             with obstore (the library batchgen uses) and, if installed, with s3fs (the
             fsspec convention): the store's best-case rate, and the choice of library.
  run        `batchgen run --out s3://…` of --units units whose jobs take no time: the
             store is the bottleneck; images written per second over the raw rate.
  memory     the same run at each of --memory-units: peak RSS, the last over the first.

Targets (issue 19): batchgen >= 70% of the raw PUT rate; memory <= 1.25x from 10k to 50k.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import KEY, SECRET, batchgen, run_child, simulator, write_workload

BUCKET = "bench"
ACCESS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
TARGET_RATE = 0.70
TARGET_MEMORY_GROWTH = 1.25
# The bytes each PUT of the raw loop writes: one of the simulator's 64 px images.
IMAGE_SIDE = 64

RAW_OBSTORE = """
import asyncio, os, sys, time, obstore
from obstore.store import S3Store
from batchgen.sim.png import make_png
endpoint, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    # Made and dropped within the loop: a store alive at interpreter exit aborts it.
    store = S3Store("bench", endpoint=endpoint, region="us-east-1",
                    client_options={"allow_http": True})
    slots = asyncio.Semaphore(concurrency)
    async def one(i):
        async with slots:
            data = make_png(64, 64, f"raw {i}")
            await obstore.put_async(store, f"raw-obstore/{i}.png", data, mode="create")
    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    print(count / (time.monotonic() - started), flush=True)
asyncio.run(main())
# A bare loop like this one is aborted at interpreter exit now and then (a tokio worker
# thread of obstore's runtime meeting finalisation; batchgen's command exited 0 in 20
# runs of 20 against the same server): its figure is printed, so it leaves at once.
os._exit(0)
"""

RAW_S3FS = """
import asyncio, sys, time, s3fs
from batchgen.sim.png import make_png
endpoint, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    fs = s3fs.S3FileSystem(asynchronous=True, endpoint_url=endpoint,
                           client_kwargs={"region_name": "us-east-1"})
    session = await fs.set_session()
    slots = asyncio.Semaphore(concurrency)
    async def one(i):
        async with slots:
            data = make_png(64, 64, f"raw {i}")
            await fs._pipe_file(f"bench/raw-s3fs/{i}.png", data)
    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    print(count / (time.monotonic() - started))
    await session.close()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def s3_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)  # the server starting: not a measurement
        request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=5).close()
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def raw_rate(
    script: str, endpoint: str, count: int, concurrency: int
) -> tuple[float, float] | None:
    """(PUTs per second, CPU milliseconds per PUT) of a plain loop; None if its
    library is not installed."""
    child = run_child(
        [sys.executable, "-c", script, endpoint, str(count), str(concurrency)], ACCESS
    )
    if child.returncode != 0:
        if "No module named" in child.output:
            return None
        sys.exit(f"raw PUT loop failed:\n{child.output}")
    return float(child.output.strip().splitlines()[-1]), 1000 * child.cpu / count


def batchgen_run(
    endpoint: str, place: Path, units: int, concurrency: int, prefix: str
) -> tuple[float, float]:
    """(images written per second, peak RSS in MB) of one run into the bucket."""
    manifest, _ = write_workload(place, units, concurrency)
    with simulator(job_seconds=0.0, jitter=0.0, seed=1) as sim:
        env = {
            **ACCESS,
            "SCENARIO_API_KEY": KEY,
            "SCENARIO_API_SECRET": SECRET,
            "SCENARIO_API_URL": sim.api_url,
        }
        child = run_child(
            batchgen(
                "run",
                str(manifest),
                "--out",
                f"s3://{BUCKET}/{prefix}",
                "--storage-option",
                f"endpoint_url={endpoint}",
                "--storage-option",
                "region_name=us-east-1",
                "--state-dir",
                str(place / f"state-{prefix}"),
                "--poll-interval",
                "0.05",
                "--quiet",
            ),
            env,
        )
        if child.returncode != 0:
            sys.exit(f"batchgen run failed:\n{child.output}")
        assert sim.first_job_at is not None and sim.last_download_at is not None
        # From the first POST to the last image fetched (then written): the stretch in
        # which the store is written to, free of the process's start and its views.
        seconds = max(sim.last_download_at - sim.first_job_at, 1e-9)
    return units / seconds, child.peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--memory-units", type=int, nargs="+", default=[10_000, 50_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, s3_server() as endpoint:
        place = Path(temporary)
        measured = raw_rate(RAW_OBSTORE, endpoint, args.units, args.concurrency)
        assert measured is not None
        raw, cpu = measured
        print(
            f"raw PUT loop, obstore: {raw:.0f} PUT/s, {cpu:.2f} ms CPU per PUT "
            f"({args.concurrency} at a time)"
        )
        other = raw_rate(RAW_S3FS, endpoint, args.units, args.concurrency)
        if other is not None:
            print(
                f"raw PUT loop, s3fs:    {other[0]:.0f} PUT/s, {other[1]:.2f} ms CPU per PUT "
                f"(obstore: {raw / other[0]:.2f}x the rate, {cpu / other[1]:.2f}x the CPU)"
            )
        else:
            print("raw PUT loop, s3fs:    not installed (pip install s3fs to compare)")
        rate, _ = batchgen_run(endpoint, place, args.units, args.concurrency, "run")
        ratio = rate / raw
        mark = "meets" if ratio >= TARGET_RATE else "MISSES"
        print(f"batchgen run:          {rate:.0f} images/s = {ratio:.2f}x raw")
        print(f"                       ({mark} >= {TARGET_RATE})")
        peaks: list[float] = []
        for units in args.memory_units:
            _, peak = batchgen_run(endpoint, place, units, args.concurrency, f"memory-{units}")
            peaks.append(peak)
            print(f"memory, {units} units:  {peak:.0f} MB peak RSS")
        growth = peaks[-1] / peaks[0]
        mark = "meets" if growth <= TARGET_MEMORY_GROWTH else "MISSES"
        print(
            f"memory growth {args.memory_units[0]} -> {args.memory_units[-1]}: {growth:.2f}x "
            f"({mark} <= {TARGET_MEMORY_GROWTH})"
        )


if __name__ == "__main__":
    main()
