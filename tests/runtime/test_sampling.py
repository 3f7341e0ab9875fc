"""Bad sampling parameters are refused with the field named."""

from __future__ import annotations

import pytest

from edge_agent.runtime import InvalidRequest, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -5}, "seed"),
        ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert info.value.param == param


def test_batching_keys() -> None:
    assert SamplingParams(temperature=0).batch_key() == SamplingParams(temperature=0).batch_key()
    assert SamplingParams(seed=1).batch_key() is None
    assert SamplingParams(json_schema="{}").batch_key() is None
    assert (
        SamplingParams(temperature=0.5).batch_key() != SamplingParams(temperature=0.6).batch_key()
    )
