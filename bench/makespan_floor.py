"""How close to the ideal a run can get: a Monte Carlo model of the pipeline scenario.

    python bench/makespan_floor.py [--units 500 --concurrency 50 --jitter 0.1]

C slots run N jobs of 1 s ± jitter (uniform, as the simulator draws them); a freed slot
takes the next job after ``overhead`` seconds, and an end is seen at the next listing,
``gap`` seconds apart.  It prints the mean of makespan over ``ceil(N / C) × mean job
time`` for: ends seen at once (the floor set by the jitter alone), and listings every
``1 / (r × jobs ending per second)`` for a few request budgets r per job.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics


def makespan_ratio(
    seed: int, units: int, concurrency: int, jitter: float, gap: float, overhead: float
) -> float:
    rng = random.Random(seed)
    durations = [1.0 + rng.uniform(-jitter, jitter) for _ in range(units)]
    slots = sorted(durations[:concurrency])  # when each slot's current job ends
    taken, last_seen = concurrency, 0.0
    while slots:
        end = slots.pop(0)
        seen = math.ceil(end / gap) * gap if gap else end
        last_seen = max(last_seen, seen)
        if taken < units:
            slots.append(seen + overhead + durations[taken])
            slots.sort()
            taken += 1
    return last_seen / (math.ceil(units / concurrency) * statistics.fmean(durations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--overhead", type=float, default=0.01, help="seconds to refill a slot")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rate = args.concurrency / 1.0  # jobs ending per second once the run is under way
    cases = [("ends seen at once, no overhead", 0.0, 0.0)] + [
        (f"{budget} listings per job", 1 / (budget * rate), args.overhead)
        for budget in (0.2, 0.22, 0.25, 0.5, 1.0)
    ]
    for label, gap, overhead in cases:
        ratios = [
            makespan_ratio(seed, args.units, args.concurrency, args.jitter, gap, overhead)
            for seed in range(args.runs)
        ]
        print(f"{label:32s} makespan/ideal {statistics.fmean(ratios):.3f}")


if __name__ == "__main__":
    main()
