"""The rollout state machine, written as data: every allowed move is one row of TRANSITIONS.

A rollout is `running` while it notifies the devices of its current wave, `waiting_gate`
while that wave soaks and its gates decide, and `waiting_approval` when the next wave needs
a second operator. `completed`, `aborted` and `rolled_back` are final. `paused` remembers
nothing itself: resuming goes back to `running`, which finishes notifying the current wave
(if anything is left) and then evaluates its gates again.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    CREATED = "created"
    WAITING_APPROVAL = "waiting_approval"
    RUNNING = "running"
    WAITING_GATE = "waiting_gate"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class Event(StrEnum):
    START = "start"  # the driver picks a new rollout up
    NEEDS_APPROVAL = "needs_approval"  # the next wave may not open without a second operator
    APPROVE = "approve"
    WAVE_NOTIFIED = "wave_notified"  # every device of the wave has its desired state
    GATE_PASSED = "gate_passed"  # a later wave follows
    LAST_GATE_PASSED = "last_gate_passed"
    GATE_FAILED = "gate_failed"  # on_failure = pause
    GATE_INCONCLUSIVE = "gate_inconclusive"  # pauses, never passes
    AUTO_ROLLBACK = "auto_rollback"  # a gate failed and on_failure = rollback
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    SUPERSEDE = "supersede"  # a newer rollout of the same model took its devices


FINAL = frozenset({State.COMPLETED, State.ABORTED, State.ROLLED_BACK})
ACTIVE = frozenset(State) - FINAL
_LIVE = (State.CREATED, State.WAITING_APPROVAL, State.RUNNING, State.WAITING_GATE, State.PAUSED)

TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CREATED, Event.START): State.RUNNING,
    (State.RUNNING, Event.NEEDS_APPROVAL): State.WAITING_APPROVAL,
    (State.WAITING_APPROVAL, Event.APPROVE): State.RUNNING,
    (State.RUNNING, Event.WAVE_NOTIFIED): State.WAITING_GATE,
    (State.WAITING_GATE, Event.GATE_PASSED): State.RUNNING,
    (State.WAITING_GATE, Event.LAST_GATE_PASSED): State.COMPLETED,
    (State.WAITING_GATE, Event.GATE_FAILED): State.PAUSED,
    (State.WAITING_GATE, Event.GATE_INCONCLUSIVE): State.PAUSED,
    (State.WAITING_GATE, Event.AUTO_ROLLBACK): State.ROLLED_BACK,
    **{(s, Event.PAUSE): State.PAUSED for s in _LIVE if s is not State.PAUSED},
    (State.PAUSED, Event.RESUME): State.RUNNING,
    **{(s, Event.ABORT): State.ABORTED for s in _LIVE},
    **{(s, Event.ROLLBACK): State.ROLLED_BACK for s in _LIVE},
    **{(s, Event.SUPERSEDE): State.ABORTED for s in _LIVE},
}


class IllegalTransition(ValueError):
    """An event the rollout's state does not allow (e.g. resuming a running rollout)."""


def allowed(state: State) -> list[Event]:
    return [event for (source, event) in TRANSITIONS if source is state]


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        choices = ", ".join(allowed(state)) or "nothing (it is finished)"
        raise IllegalTransition(
            f"a rollout that is {state} cannot {event}; it allows: {choices}"
        ) from None
