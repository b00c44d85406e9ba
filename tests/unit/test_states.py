"""The run and step state machines, walked pair by pair, and the operator controls against docs/api.md."""

from __future__ import annotations

import itertools

import pytest

from orchestrator import states
from orchestrator.states import RunStatus, StepStatus

R, S = RunStatus, StepStatus

MACHINES = {
    "run": (RunStatus, states.RUN_TRANSITIONS, states.run_transition),
    "step": (StepStatus, states.STEP_TRANSITIONS, states.step_transition),
}

EVERY_PAIR = [
    pytest.param(machine, current, target, id=f"{machine}:{current}->{target}")
    for machine, (enum, _, _) in MACHINES.items()
    for current, target in itertools.product(enum, enum)
]


@pytest.mark.parametrize(("machine", "current", "target"), EVERY_PAIR)
def test_transition_accepts_exactly_the_table(machine, current, target):
    enum, table, transition = MACHINES[machine]
    if target in table[current]:
        assert transition(current, target) is target
        return
    with pytest.raises(states.InvalidTransition) as caught:
        transition(current, target)
    exc = caught.value
    assert (exc.current, exc.target, exc.action) == (current, target, None)
    # allowed_from lists every status with an edge to target, sorted, and never the refused one.
    expected = sorted(str(s) for s in enum if target in table[s])
    assert exc.allowed_from == expected
    assert current not in exc.allowed_from
    assert all(type(s) is str for s in exc.allowed_from)  # plain values, ready for a JSON error body
    assert str(exc) == f"-> {target} is not allowed from '{current}'; allowed from {expected}"


def test_tables_cover_every_status_and_only_statuses():
    assert set(states.RUN_TRANSITIONS) == set(RunStatus)
    assert set(states.STEP_TRANSITIONS) == set(StepStatus)
    for targets in states.RUN_TRANSITIONS.values():
        assert targets <= set(RunStatus)
    for targets in states.STEP_TRANSITIONS.values():
        assert targets <= set(StepStatus)
    # No status moves to itself: a duplicate report must find nothing to change.
    assert all(s not in states.RUN_TRANSITIONS[s] for s in RunStatus)
    assert all(s not in states.STEP_TRANSITIONS[s] for s in StepStatus)


def test_succeeded_run_is_final_and_failed_or_cancelled_only_requeue():
    assert states.RUN_TRANSITIONS[R.SUCCEEDED] == frozenset()
    assert states.RUN_TRANSITIONS[R.FAILED] == {R.QUEUED}
    assert states.RUN_TRANSITIONS[R.CANCELLED] == {R.QUEUED}
    assert {R.SUCCEEDED, R.FAILED, R.CANCELLED} == states.TERMINAL_RUN


@pytest.mark.parametrize("target", list(RunStatus))
def test_run_allowed_from_matches_the_table(target):
    expected = {s for s in RunStatus if target in states.RUN_TRANSITIONS[s]}
    assert states.run_allowed_from(target) == expected
    for source in RunStatus:
        ok = source in states.run_allowed_from(target)
        assert ok == (target in states.RUN_TRANSITIONS[source])


@pytest.mark.parametrize("target", list(StepStatus))
def test_step_allowed_from_matches_the_table(target):
    expected = {s for s in StepStatus if target in states.STEP_TRANSITIONS[s]}
    assert states.step_allowed_from(target) == expected
    for source in StepStatus:
        ok = source in states.step_allowed_from(target)
        assert ok == (target in states.STEP_TRANSITIONS[source])


def test_allowed_from_spot_checks():
    # A run reaches `queued` only through `retry`; nothing re-enters `running` from a terminal status.
    assert states.run_allowed_from(R.QUEUED) == {R.FAILED, R.CANCELLED}
    assert states.run_allowed_from(R.RUNNING) == {R.QUEUED, R.WAITING, R.PAUSED}
    assert states.step_allowed_from(S.RUNNING) == {S.QUEUED, S.PENDING, S.RETRYING}
    assert states.step_allowed_from(S.SKIPPED) == {S.PENDING}


# The "Controls" table of docs/api.md, written out here on purpose (not read from states.CONTROLS).
# Result: the run's status right after the action; None for `rerun`, which makes a new run.
# `resume` goes back to `running` (the scheduler then settles it to `waiting` if need be);
# `retry` puts the same run back in the queue, from where the scheduler continues it.
API_CONTROLS: dict[str, tuple[set[str], str | None]] = {
    "pause": ({"running", "waiting"}, "paused"),
    "resume": ({"paused"}, "running"),
    "cancel": ({"queued", "running", "waiting", "paused"}, "cancelled"),
    "retry": ({"failed", "cancelled"}, "queued"),
    "rerun": ({"failed", "cancelled", "succeeded"}, None),
}

EVERY_CONTROL = [
    pytest.param(action, status, id=f"{action}:{status}")
    for action, status in itertools.product(API_CONTROLS, RunStatus)
]


@pytest.mark.parametrize(("action", "status"), EVERY_CONTROL)
def test_apply_control_follows_the_api_table(action, status):
    allowed, result = API_CONTROLS[action]
    if status in allowed:
        assert states.apply_control(action, status) == result
        if result is not None:
            # The control's move is itself an edge of the run table (so the SQL guard agrees).
            assert states.run_transition(status, RunStatus(result)) == result
        return
    with pytest.raises(states.InvalidTransition) as caught:
        states.apply_control(action, status)
    exc = caught.value
    assert exc.action == action
    assert exc.current == status
    assert exc.allowed_from == sorted(allowed)
    assert str(exc) == f"{action} is not allowed from '{status}'; allowed from {sorted(allowed)}"


def test_controls_are_exactly_the_api_actions():
    assert set(states.CONTROLS) == set(API_CONTROLS)
