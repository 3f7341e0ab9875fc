"""The transition table: every path the issue names, and nothing else."""

from __future__ import annotations

import pytest

from hub.rollouts.machine import (
    FINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    allowed,
    next_state,
)


def run(*events: Event) -> State:
    state = State.CREATED
    for event in events:
        state = next_state(state, event)
    return state


def test_a_healthy_rollout_runs_wave_by_wave_to_completed() -> None:
    waves = [Event.WAVE_NOTIFIED, Event.GATE_PASSED] * 3
    assert run(Event.START, *waves, Event.WAVE_NOTIFIED, Event.LAST_GATE_PASSED) is State.COMPLETED


def test_approval_failure_inconclusive_and_rollback_paths() -> None:
    assert run(Event.START, Event.NEEDS_APPROVAL) is State.WAITING_APPROVAL
    assert run(Event.START, Event.NEEDS_APPROVAL, Event.APPROVE) is State.RUNNING
    gate = (Event.START, Event.WAVE_NOTIFIED)
    assert run(*gate, Event.GATE_FAILED) is State.PAUSED
    assert run(*gate, Event.GATE_INCONCLUSIVE) is State.PAUSED
    assert run(*gate, Event.AUTO_ROLLBACK) is State.ROLLED_BACK
    assert run(*gate, Event.GATE_INCONCLUSIVE, Event.RESUME) is State.RUNNING


def test_inconclusive_never_passes() -> None:
    targets = {t for (s, e), t in TRANSITIONS.items() if e is Event.GATE_INCONCLUSIVE}
    assert targets == {State.PAUSED}


@pytest.mark.parametrize("final", sorted(FINAL))
def test_final_states_allow_nothing(final: State) -> None:
    assert allowed(final) == []
    with pytest.raises(IllegalTransition, match="nothing"):
        next_state(final, Event.RESUME)


def test_every_live_state_can_be_aborted_rolled_back_and_superseded() -> None:
    for state in set(State) - FINAL:
        assert next_state(state, Event.ABORT) is State.ABORTED
        assert next_state(state, Event.ROLLBACK) is State.ROLLED_BACK
        assert next_state(state, Event.SUPERSEDE) is State.ABORTED


def test_an_illegal_event_names_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition, match=r"running cannot resume; it allows:.*pause"):
        next_state(State.RUNNING, Event.RESUME)
    with pytest.raises(IllegalTransition):
        next_state(State.WAITING_APPROVAL, Event.WAVE_NOTIFIED)  # no wave opens unapproved
