"""Control flow in a definition, in the pure core: `when` conditions, `join` rules and `on_failure:
continue`, with the skip reasons they leave (condition, upstream_skipped, blocked), and their checks
at publish."""

from __future__ import annotations

import pytest

from orchestrator.core import advance, outcome
from orchestrator.core.inputs import AttemptReport
from orchestrator.core.vocabulary import EventType
from orchestrator.errors import DefinitionInvalid
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import (
    PERMANENT_ERROR,
    RUN_ID,
    SUCCESS,
    counting_env,
    run_state,
    step_state,
    table_violations,
    tool,
    workflow,
)

R, S = RunStatus, StepStatus

ROUTED = workflow(
    "routed",
    tool("classify"),
    tool("refund", "classify", when="steps.classify.output.category == 'refund'"),
    tool("other", "classify", when="steps.classify.output.category != 'refund'"),
    tool("after_refund", "refund"),
    tool("report", "refund", "other", join="any_succeeded"),
    tool("cleanup", "refund", "other", join="all_done"),
)


def passed(definition, statuses: dict, outputs: dict):
    state = run_state(definition, R.RUNNING, {s: step_state(definition, s, st, 1 if st is not S.PENDING else 0)
                                              for s, st in statuses.items()}, outputs=outputs)
    transition = advance.on_advance(state, definition, counting_env(), kept={})
    assert table_violations(transition) == []
    return transition


def after_statuses(transition) -> dict:
    return {s.step_id: s.status for s in transition.after.steps.values()}


def skip_reasons(transition) -> dict:
    return {m.step_id: m.values["skipped_reason"] for m in transition.moves if m.target is S.SKIPPED}


@pytest.mark.parametrize(("category", "runs", "skipped"), [
    ("refund", "refund", "other"),
    ("billing", "other", "refund"),
])
def test_a_condition_picks_the_branch_and_the_other_is_skipped_with_its_dependents(category, runs, skipped):
    transition = passed(ROUTED, {"classify": S.SUCCEEDED}, {"classify": {"category": category}})
    statuses = after_statuses(transition)
    assert statuses[runs] is S.QUEUED and statuses[skipped] is S.SKIPPED
    reasons = skip_reasons(transition)
    assert reasons[skipped] == "condition"
    # after_refund needs refund (all_succeeded): skipped with it, or waiting for it.
    assert reasons.get("after_refund") == ("upstream_skipped" if skipped == "refund" else None)
    completed = [e for e in transition.events if e.type is EventType.STEP_COMPLETED]
    assert {e.step_id: e.data["reason"] for e in completed} == reasons
    # any_succeeded and all_done wait while one branch is still to run.
    assert statuses["report"] is S.PENDING and statuses["cleanup"] is S.PENDING


def test_any_succeeded_and_all_done_run_once_their_needs_settle():
    transition = passed(ROUTED, {"classify": S.SUCCEEDED, "refund": S.SKIPPED, "other": S.SUCCEEDED,
                                 "after_refund": S.SKIPPED}, {"classify": {}, "other": {}})
    statuses = after_statuses(transition)
    assert statuses["report"] is S.QUEUED and statuses["cleanup"] is S.QUEUED


def test_any_succeeded_with_no_need_succeeded_is_skipped_and_all_done_still_runs():
    transition = passed(ROUTED, {"classify": S.SUCCEEDED, "refund": S.SKIPPED, "other": S.SKIPPED,
                                 "after_refund": S.SKIPPED}, {"classify": {}})
    assert skip_reasons(transition) == {"report": "upstream_skipped"}
    assert after_statuses(transition)["cleanup"] is S.QUEUED


def test_a_run_whose_steps_all_settled_succeeds_with_skipped_steps():
    transition = passed(ROUTED, {"classify": S.SUCCEEDED, "refund": S.SKIPPED, "other": S.SUCCEEDED,
                                 "after_refund": S.SKIPPED, "report": S.SUCCEEDED, "cleanup": S.SUCCEEDED},
                        {"classify": {}, "other": {"x": 1}, "report": {"r": 1}, "cleanup": {"c": 1}})
    assert transition.run_to is R.SUCCEEDED
    assert transition.run_values["output"] == {"after_refund": None, "report": {"r": 1}, "cleanup": {"c": 1}}


NOTIFYING = workflow(
    "notifying",
    tool("work"),
    tool("notify", "work", on_failure="continue"),
    tool("needs_notify", "notify"),
    tool("finally", "notify", join="all_done"),
)


def test_a_step_that_may_fail_lets_the_run_go_on_and_its_dependents_follow_their_join():
    state = run_state(NOTIFYING, R.RUNNING, {
        "work": step_state(NOTIFYING, "work", S.SUCCEEDED, 1),
        "notify": step_state(NOTIFYING, "notify", S.RUNNING, 1),
    })
    report = AttemptReport(RUN_ID, "notify", 1, PERMANENT_ERROR)
    transition = outcome.on_report(state, NOTIFYING, report, counting_env())
    assert transition.run_to is None and transition.wakes_scheduler
    assert {m.step_id: m.target for m in transition.moves} == {"notify": S.FAILED}
    after = advance.on_advance(transition.after, NOTIFYING, counting_env(), kept={})
    assert skip_reasons(after) == {"needs_notify": "blocked"}
    assert after_statuses(after)["finally"] is S.QUEUED
    done = advance.on_advance(after.after.with_steps([after.after.step("finally").moved(status=S.SUCCEEDED)]),
                              NOTIFYING, counting_env(), kept={})
    assert done.run_to is R.SUCCEEDED


def test_a_step_that_must_not_fail_still_fails_the_run():
    definition = workflow("strict", tool("work"), tool("after", "work"))
    state = run_state(definition, R.RUNNING, {"work": step_state(definition, "work", S.RUNNING, 1)})
    transition = outcome.on_report(state, definition, AttemptReport(RUN_ID, "work", 1, PERMANENT_ERROR),
                                   counting_env())
    assert transition.run_to is R.FAILED and skip_reasons(transition) == {"after": "blocked"}


def test_the_worker_leaves_a_dependent_with_a_condition_to_the_scheduler():
    state = run_state(ROUTED, R.RUNNING, {"classify": step_state(ROUTED, "classify", S.RUNNING, 1)},
                      others_succeeded=False)
    report = AttemptReport(RUN_ID, "classify", 1, SUCCESS, queue_ready=True)
    transition = outcome.on_report(state, ROUTED, report, counting_env())
    assert [m.step_id for m in transition.moves] == ["classify"] and transition.wakes_scheduler


def test_a_condition_that_cannot_be_evaluated_skips_its_step_and_says_why():
    definition = workflow("broken", tool("a"), tool("b", "a", when="steps.a.output.missing.deeper"))
    transition = passed(definition, {"a": S.SUCCEEDED}, {"a": {}})
    assert skip_reasons(transition) == {"b": "condition"}
    [failed] = [e for e in transition.events if e.type is EventType.STEP_CONDITION_FAILED]
    assert failed.step_id == "b" and failed.data["error"]["code"] == "template_error"


def test_the_pass_asks_for_the_outputs_a_condition_reads():
    state = run_state(ROUTED, R.RUNNING, {"classify": step_state(ROUTED, "classify", S.SUCCEEDED, 1)})
    with pytest.raises(advance.NeedsFacts) as needs:
        advance.on_advance(state, ROUTED, counting_env(), kept={})
    assert needs.value.context


@pytest.mark.parametrize(("when", "problem"), [
    ("steps.later.output.ok", "names step 'later', which is not upstream of this step"),
    ("steps.a.output.ok ==", "expression syntax error"),
    ("steps.a.__class__", "Python internal"),
])
def test_a_condition_is_checked_at_publish(when, problem):
    with pytest.raises(DefinitionInvalid) as refused:
        workflow("bad", tool("a"), tool("b", "a", when=when), tool("later"))
    assert any(problem in p for p in refused.value.details["problems"]), refused.value.details


def test_a_condition_may_read_any_step_upstream_and_the_input():
    workflow("deep", tool("a"), tool("b", "a"), tool("c", "b", when="steps.a.output.ok and input.go"))
