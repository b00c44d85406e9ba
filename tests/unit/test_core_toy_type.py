"""A step type registered later (tests/unit/toy_steptype.py) goes through the pure core unchanged: the
scheduler's pass dispatches its worker type, parks its waiting type with the due time its ``park``
says, and resolves it, when due, with the outcome its ``on_due`` says."""

from __future__ import annotations

import pytest

from orchestrator import steptypes
from orchestrator.core import advance, outcome
from orchestrator.core.inputs import AttemptReport
from orchestrator.core.reports import Outcome
from orchestrator.core.transition import DueIn
from orchestrator.core.vocabulary import EventType, WaitsOn
from orchestrator.messages import StepMessage
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import RUN_ID, counting_env, run_state, step_state, table_violations, workflow
from tests.unit.toy_steptype import TOYS

R, S = RunStatus, StepStatus


@pytest.fixture
def toy_definition():
    """A `shout` step then a `pause_for` step of 2 s, with the toy types registered for the test."""
    for toy in TOYS:
        steptypes.register(toy)
    yield workflow("toy", {"id": "loud", "type": "shout", "text": "hi"},
                   {"id": "rest", "type": "pause_for", "needs": ["loud"], "seconds": 2})
    for toy in TOYS:
        steptypes.unregister(toy.name)


def test_the_first_pass_dispatches_the_toy_worker_type_to_a_worker(toy_definition):
    transition = advance.on_advance(run_state(toy_definition), toy_definition, counting_env())
    assert transition.run_to is R.RUNNING
    assert transition.messages == [StepMessage(RUN_ID, "loud", 1, "default", 300)]
    assert {m.step_id: m.target for m in transition.moves} == {"loud": S.QUEUED}


def test_a_toy_waiting_type_is_parked_then_resolved_when_due(toy_definition):
    env = counting_env()
    running = run_state(toy_definition, R.RUNNING, {"loud": step_state(toy_definition, "loud", S.RUNNING, 1)},
                        others_succeeded=False)
    shouted = outcome.on_report(running, toy_definition, AttemptReport(RUN_ID, "loud", 1, Outcome(
        output={"text": "HI"}), queue_ready=True), env)
    # The step after it waits in the database: the report leaves it to the scheduler.
    assert {m.step_id: m.target for m in shouted.moves} == {"loud": S.SUCCEEDED}
    assert shouted.run_values["has_work"] is True

    parked = advance.on_advance(shouted.after, toy_definition, env)  # pause_for renders nothing: no facts needed
    (park,) = parked.moves
    assert (park.step_id, park.target, park.values["due_at"]) == ("rest", S.WAITING, DueIn(2.0))
    assert parked.messages == [] and parked.requests == ()
    assert (parked.run_to, parked.run_values["waiting_on"]) == (R.WAITING, WaitsOn.TIMER.value)
    assert [(e.type, e.data["waiting_on"]) for e in parked.events if e.type is EventType.STEP_WAITING] == [
        (EventType.STEP_WAITING, WaitsOn.TIMER.value)]

    not_yet = advance.on_advance(parked.after, toy_definition, env)
    assert (not_yet.moves, not_yet.run_to) == ((), None)

    due = parked.after.with_steps([parked.after.step("rest").moved(due=True)])
    resolved = advance.on_advance(due, toy_definition, env)
    (done,) = resolved.moves
    assert (done.step_id, done.target, done.values["output"]) == ("rest", S.SUCCEEDED, {"paused_for": 2.0})
    assert (resolved.run_to, resolved.output_from) == (R.SUCCEEDED, ("rest",))
    assert resolved.after.statuses() == {"loud": S.SUCCEEDED, "rest": S.SUCCEEDED}
    for transition in (shouted, parked, not_yet, resolved):
        assert table_violations(transition) == []
