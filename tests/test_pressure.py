from __future__ import annotations

import pytest

from batchgen.engine.pressure import InFlightCap


@pytest.mark.parametrize(
    ("ceiling", "events", "expected"),
    [
        (10, [("429", 3)], 3),  # the server's limit, at once
        (10, [("429", 50)], 10),  # never above the user's ceiling
        (10, [("429", None)], 5),  # no limit given: halve
        (10, [("429", None)] * 5, 1),  # never below one
        (10, [("429", 4)] + [("ok", None)] * 3, 4),  # climbs only after a cap's worth
        (10, [("429", 4)] + [("ok", None)] * 4, 5),
        (10, [("429", 4)] + [("ok", None)] * 200, 10),  # and back to the ceiling, no further
        (10, [("429", 4), ("ok", None), ("ok", None), ("429", None)], 2),
    ],
)
def test_aimd(ceiling: int, events: list[tuple[str, int | None]], expected: int) -> None:
    cap = InFlightCap(ceiling)
    for kind, limit in events:
        cap.rate_limited(limit) if kind == "429" else cap.submitted()
    assert cap.current == expected
