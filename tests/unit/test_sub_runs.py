"""Sub-runs in the pure core: a ready `workflow` step starts (running, its child asked for), a child's
end settles it, the depth limit, and a retry that starts a new child."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.core import advance
from orchestrator.core.children import ChildFacts
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import counting_env, run_state, step_state, table_violations, tool, workflow

R, S = RunStatus, StepStatus

CALLER = workflow("caller", tool("prepare"),
                  {"id": "research", "type": "workflow", "workflow_id": "research", "needs": ["prepare"],
                   "input": {"topic": "{{ steps.prepare.output.topic }}", "n": "{{ input.n }}"}},
                  tool("after", "research"))


def passed(steps: dict, *, depth: int = 0, children=None, env=None):
    state = run_state(CALLER, R.RUNNING, steps, outputs={"prepare": {"topic": "tides"}}, input={"n": 3},
                      depth=depth, children=children)
    transition = advance.on_advance(state, CALLER, env or counting_env(), kept={})
    assert table_violations(transition) == []
    return transition


def test_a_ready_workflow_step_starts_running_and_asks_for_its_child_with_the_rendered_input():
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1)})
    assert transition.after.steps["research"].status is S.RUNNING
    (child,) = transition.children
    assert (child.step_id, child.attempt, child.workflow_id, child.version, child.input) == (
        "research", 1, "research", None, {"topic": "tides", "n": 3})
    assert transition.messages == []  # no worker message: the step holds no worker


def test_too_deep_fails_the_step_without_a_child():
    env = dataclasses.replace(counting_env(), max_depth=2)
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1)}, depth=2, env=env)
    assert transition.children == () and transition.after.steps["research"].status is S.FAILED
    failed = next(e for e in transition.events if e.type is EventType.STEP_FAILED)
    assert failed.data["error"]["code"] == ErrorCode.MAX_DEPTH_EXCEEDED.value
    assert transition.run_to is R.FAILED


def test_a_running_workflow_step_needs_its_childrens_facts():
    with pytest.raises(advance.NeedsFacts) as needs:
        passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                "research": step_state(CALLER, "research", S.RUNNING, 1)})
    assert needs.value.children


@pytest.mark.parametrize(("child", "status"), [
    (ChildFacts("run_child", R.RUNNING), S.RUNNING),
    (ChildFacts("run_child", R.SUCCEEDED, output={"brief": {"text": "x"}}), S.SUCCEEDED),
    (ChildFacts("run_child", R.FAILED, error={"code": "step_error", "message": "search down"}), S.RETRYING),
])
def test_the_childs_end_settles_the_step(child, status):
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                         "research": step_state(CALLER, "research", S.RUNNING, 1)}, children={"research": child})
    assert transition.after.steps["research"].status is status
    if status is S.SUCCEEDED:
        assert transition.after.steps["after"].status is S.QUEUED
    if status is S.RETRYING:
        retrying = next(e for e in transition.events if e.type is EventType.STEP_RETRYING)
        assert retrying.data["error"]["code"] == ErrorCode.CHILD_RUN_FAILED.value
        assert retrying.data["error"]["details"] == {"child_run_id": "run_child"}


def test_a_retry_whose_backoff_passed_starts_a_new_child():
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                         "research": step_state(CALLER, "research", S.RETRYING, 1, due=True)},
                        children={"research": ChildFacts("run_child", R.FAILED)})
    assert transition.after.steps["research"].status is S.RUNNING
    assert [(c.step_id, c.attempt) for c in transition.children] == [("research", 2)]
