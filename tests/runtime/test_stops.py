"""Stop strings are cut even when they arrive split across tokens."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.runtime.stops import StopMatcher


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_stop_inside_one_piece() -> None:
    assert run(["hello END world"], ("END",)) == ("hello ", True)


def test_stop_split_across_pieces() -> None:
    assert run(["hel", "lo E", "N", "D more"], ("END",)) == ("hello ", True)


def test_partial_match_that_fails_is_released() -> None:
    assert run(["a E", "NX b"], ("END",)) == ("a ENX b", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert run(["abc E"], ("END",)) == ("abc E", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["x BBB AAA"], ("AAA", "BBB")) == ("x ", True)


def test_nothing_after_the_stop() -> None:
    matcher = StopMatcher(("#",))
    assert matcher.feed("a#b") == "a"
    assert matcher.feed("more") == ""


text = st.text(alphabet="abE#ND", max_size=40)


@given(
    text=text,
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stop=st.sampled_from(["END", "#", "bb"]),
)
def test_any_split_gives_the_same_result_as_the_whole(
    text: str, cuts: list[int], stop: str
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    index = text.find(stop)
    expected = (text[:index], True) if index >= 0 else (text, False)
    assert run(pieces, (stop,)) == expected
