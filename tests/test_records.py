from __future__ import annotations

from typing import Any

import pytest

from batchgen.records import JobRecord, made_for

BODY = {"prompt": "a cat", "width": 512, "height": 512, "seed": 3}


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (dict(BODY), True),
        ({**BODY, "numInferenceSteps": 28}, True),  # defaults the API added
        ({**BODY, "seed": 4}, False),
        ({k: v for k, v in BODY.items() if k != "seed"}, False),
        ({**BODY, "prompt": "a cat "}, False),
        (None, False),  # a job that does not say what it was asked
    ],
)
def test_a_job_is_recognised_by_what_it_was_asked(
    recorded: dict[str, Any] | None, expected: bool
) -> None:
    assert made_for(JobRecord("j", "queued", request=recorded), BODY) is expected
