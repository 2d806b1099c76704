from __future__ import annotations

from typing import Any

import pytest

from batchgen.scenario.inputs import same_value
from batchgen.scenario.records import JobRecord, made_for

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
        # As the server may store it: numbers as strings or floats, modelId added.
        ({**BODY, "seed": "3", "modelId": "model_x", "guidance": 3.5}, True),
        ({**BODY, "width": 512.0, "height": "512"}, True),
        ({**BODY, "seed": "3.5"}, False),
        ({**BODY, "seed": "three"}, False),
        ({**BODY, "prompt": 0}, False),
    ],
)
def test_a_job_is_recognised_by_what_it_was_asked(
    recorded: dict[str, Any] | None, expected: bool
) -> None:
    assert made_for(JobRecord("j", "queued", request=recorded), BODY) is expected


@pytest.mark.parametrize(
    ("sent", "stored", "same"),
    [
        (42, "42", True),
        (42, 42.0, True),
        (0.1, "0.1", True),
        ("42", 42, True),
        (True, "true", True),
        (True, 1, False),
        (False, 0, False),
        ("a", "A", False),
        ([1, "2"], ["1", 2], True),
        ([1, 2], [1, 2, 3], False),
        ({"a": 1}, {"a": "1"}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),  # added keys count only at the top
        (None, "None", False),
    ],
)
def test_a_stored_value_is_the_value_sent_whatever_the_server_did_to_its_type(
    sent: Any, stored: Any, same: bool
) -> None:
    assert same_value(sent, stored) is same
