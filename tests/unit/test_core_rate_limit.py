"""The pure core's part in LLM rate limits: a step suspended on one waits with a due time and no
request, and the scheduler's pass queues it again at its due time at the same attempt."""

from __future__ import annotations

from orchestrator.core import advance, outcome
from orchestrator.core.inputs import AttemptReport
from orchestrator.core.reports import Outcome, Suspension
from orchestrator.core.transition import DueIn
from orchestrator.core.vocabulary import EventType, WaitsOn
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import (
    RUN_ID,
    counting_env,
    run_state,
    step_state,
    table_violations,
    tool,
    workflow,
)

FLOW = workflow("limited", tool("ask"), tool("next", "ask"))
LIMITED = Outcome(suspend=Suspension("rate_limit", "rate limit of openai tokens_per_min=100", {"kind": "rate_limit"},
                                     due_in_s=2.5))


def test_a_rate_limited_attempt_waits_with_a_due_time_and_opens_no_request():
    state = run_state(FLOW, RunStatus.RUNNING, {"ask": step_state(FLOW, "ask", StepStatus.RUNNING, 1)})
    transition = outcome.on_report(state, FLOW, AttemptReport(RUN_ID, "ask", 1, LIMITED), counting_env())
    [move] = transition.moves
    assert (move.target, move.values["due_at"], move.values["waiting_on"]) == (
        StepStatus.WAITING, DueIn(2.5), WaitsOn.RATE_LIMIT.value)
    assert move.values["checkpoint"] == {"kind": "rate_limit"}
    assert transition.requests == ()
    [event] = transition.events
    assert (event.type, event.data["waiting_on"], event.data["retry_in_s"]) == (EventType.STEP_WAITING, "rate_limit", 2.5)
    assert table_violations(transition) == []


def test_the_pass_queues_a_due_rate_limited_step_again_at_the_same_attempt():
    waiting = step_state(FLOW, "ask", StepStatus.WAITING, 1, waiting_on="rate_limit", due=True)
    transition = advance.on_advance(run_state(FLOW, RunStatus.WAITING, {"ask": waiting}, outputs={}), FLOW,
                                    counting_env(), kept={})
    assert [(m.target, m.message.attempt if m.message else None) for m in transition.moves if m.step_id == "ask"] == [
        (StepStatus.PENDING, None), (StepStatus.QUEUED, 1)]
    assert transition.after.step("ask").attempt == 1 and transition.after.step("ask").waiting_on is None
    assert table_violations(transition) == []


def test_a_rate_limited_step_not_yet_due_stays_waiting():
    waiting = step_state(FLOW, "ask", StepStatus.WAITING, 1, waiting_on="rate_limit", due=False)
    transition = advance.on_advance(run_state(FLOW, RunStatus.WAITING, {"ask": waiting}, outputs={}), FLOW,
                                    counting_env(), kept={})
    assert [m for m in transition.moves if m.step_id == "ask"] == []
    assert transition.after.step("ask").status is StepStatus.WAITING
