"""Sub-runs in the pure core: a ready `workflow` step starts (running, its child asked for), a child's
end (which made the step due) settles it, the depth limit, a retry that starts a new child, a stopped
step's children asked to be cancelled; and a map over child runs (for_each over a `workflow` step)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.core import advance, controls, items
from orchestrator.core.children import ChildFacts
from orchestrator.core.inputs import Actor, Control
from orchestrator.core.transition import ITEM_OUTPUTS, Draft
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


def test_a_ready_workflow_step_starts_running_and_asks_for_its_child():
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1)})
    assert transition.after.steps["research"].status is S.RUNNING
    (child,) = transition.children
    # Its input is rendered where the child is created (orchestrator/sub_runs.py), from the step's templates.
    assert (child.step_id, child.attempt, child.workflow_id, child.version) == ("research", 1, "research", None)
    assert transition.messages == []  # no worker message: the step holds no worker


def test_too_deep_fails_the_step_without_a_child():
    env = dataclasses.replace(counting_env(), max_depth=2)
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1)}, depth=2, env=env)
    assert transition.children == () and transition.after.steps["research"].status is S.FAILED
    failed = next(e for e in transition.events if e.type is EventType.STEP_FAILED)
    assert failed.data["error"]["code"] == ErrorCode.MAX_DEPTH_EXCEEDED.value
    assert transition.run_to is R.FAILED


def test_a_running_workflow_step_made_due_by_its_childs_end_needs_its_childs_facts():
    running = {"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
               "research": step_state(CALLER, "research", S.RUNNING, 1)}
    assert passed(running).children == ()  # not due: its child is live, nothing to read
    with pytest.raises(advance.NeedsFacts) as needs:
        passed({**running, "research": step_state(CALLER, "research", S.RUNNING, 1, due=True)})
    assert needs.value.children == ("research",)


@pytest.mark.parametrize(("child", "status"), [
    (ChildFacts("run_child", R.RUNNING), S.RUNNING),
    (ChildFacts("run_child", R.SUCCEEDED, output={"brief": {"text": "x"}}), S.SUCCEEDED),
    (ChildFacts("run_child", R.FAILED, error={"code": "step_error", "message": "search down"}), S.RETRYING),
])
def test_the_childs_end_settles_the_step(child, status):
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                         "research": step_state(CALLER, "research", S.RUNNING, 1, due=True)},
                        children={"research": child})
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

    assert transition.after.steps["research"].due is False  # the new attempt's child is not ended yet


def test_a_woken_step_whose_child_is_still_live_only_loses_its_due_time():
    transition = passed({"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                         "research": step_state(CALLER, "research", S.RUNNING, 1, due=True)},
                        children={"research": ChildFacts("run_child", R.RUNNING)})
    (move,) = [m for m in transition.moves if m.step_id == "research"]
    assert move.target is S.RUNNING and move.values == {"due_at": None}


def test_a_cancelled_run_asks_for_its_sub_run_steps_children_to_be_cancelled():
    state = run_state(CALLER, R.RUNNING, {"prepare": step_state(CALLER, "prepare", S.SUCCEEDED, 1),
                                          "research": step_state(CALLER, "research", S.RUNNING, 1)})
    transition = controls.on_control(state, CALLER, Control("cancel", Actor("tok")))
    assert transition.after.steps["research"].status is S.CANCELLED
    assert transition.stop_children == ("research",)


def test_a_run_that_ended_elsewhere_asks_again_for_its_children_to_be_stopped():
    state = run_state(CALLER, R.FAILED, {"prepare": step_state(CALLER, "prepare", S.FAILED, 1),
                                         "research": step_state(CALLER, "research", S.CANCELLED, 1)})
    transition = advance.on_advance(state, CALLER, counting_env(), kept={})
    assert transition.stop_children == ("research",) and transition.moves == ()


# A map over child runs: one child run of `research` per topic, two at a time, three of four must succeed.
MAP = workflow("map", tool("prepare"),
               {"id": "research", "type": "workflow", "workflow_id": "research", "needs": ["prepare"],
                "input": {"topic": "{{ item }}", "n": "{{ index }}"}, "for_each": "steps.prepare.output.topics",
                "max_parallel": 2, "min_succeeded": 3},
               tool("after", "research"))


def mapped(steps: dict, *, depth: int = 0, children=None, env=None, succeeded_items=None):
    state = run_state(MAP, R.RUNNING, {"prepare": step_state(MAP, "prepare", S.SUCCEEDED, 1), **steps},
                      outputs={"prepare": {"topics": ["tides", "winds", "ice", "sand"]}}, depth=depth,
                      children=children, succeeded_items=succeeded_items)
    transition = advance.on_advance(state, MAP, env or counting_env(), kept={})
    assert table_violations(transition) == []
    return transition


def test_a_map_starts_max_parallel_items_as_child_runs_not_worker_messages():
    transition = mapped({})
    step = transition.after.steps["research"]
    assert step.status is S.RUNNING and step.item_counts == items.ItemCounts(4, 2, 2).as_json()
    (write,) = transition.items
    assert (write.kind, write.queue_first, write.child_workflow) == ("expand", 2, "research")
    assert transition.messages == [] and transition.children == ()  # the writer starts the items' children


def test_a_map_too_deep_fails_at_once_without_items():
    transition = mapped({}, depth=2, env=dataclasses.replace(counting_env(), max_depth=2))
    assert transition.after.steps["research"].status is S.FAILED and transition.items == ()
    failed = next(e for e in transition.events if e.type is EventType.STEP_FAILED)
    assert failed.data["error"]["code"] == ErrorCode.MAX_DEPTH_EXCEEDED.value


def running_map(counts: items.ItemCounts, attempt: int = 1):
    return {"research": step_state(MAP, "research", S.RUNNING, 1, item_counts=counts.as_json()),
            "research[0]": step_state(MAP, "research[0]", S.RUNNING, attempt, due=True)}


def test_an_items_child_that_succeeded_is_counted_and_starts_the_next_item():
    transition = mapped(running_map(items.ItemCounts(4, pending=2, in_flight=2)),
                        children={"research[0]": ChildFacts("run_c0", R.SUCCEEDED, output={"summary": "s"})})
    assert transition.after.steps["research[0]"].status is S.SUCCEEDED
    assert transition.after.steps["research"].item_counts == items.ItemCounts(4, 1, 2, succeeded=1).as_json()
    assert [(w.kind, w.queue_first, w.child_workflow) for w in transition.items] == [("queue", 1, "research")]


def test_an_items_failed_child_retries_the_item_with_a_new_child():
    failed = mapped(running_map(items.ItemCounts(4, pending=2, in_flight=2)),
                    children={"research[0]": ChildFacts("run_c0", R.FAILED, error={"message": "down"})})
    assert failed.after.steps["research[0]"].status is S.RETRYING and failed.items == ()
    due = {"research": failed.after.steps["research"],
           "research[0]": step_state(MAP, "research[0]", S.RETRYING, 1, due=True)}
    again = mapped(due)
    assert again.after.steps["research[0]"].status is S.RUNNING
    assert [(c.step_id, c.attempt, c.workflow_id) for c in again.children] == [("research[0]", 2, "research")]


def test_a_map_that_can_no_longer_reach_k_fails_and_asks_for_its_live_children_to_be_cancelled():
    # 4 items, 3 must succeed: a second failure for good (the item's last attempt) leaves at most 2.
    counts = items.ItemCounts(4, pending=1, in_flight=2, failed=1)
    transition = mapped(running_map(counts, attempt=3),
                        children={"research[0]": ChildFacts("run_c0", R.CANCELLED)})
    assert transition.after.steps["research"].status is S.FAILED
    assert [(w.kind, w.step_id) for w in transition.items] == [("stop", "research")]
    assert transition.stop_children == ("research",)
    assert transition.run_to is R.FAILED


# A map allowed to fail (k-of-n failing early leaves the run going on), beside a long step.
MAP_MAY_FAIL = workflow("map may fail", tool("prepare"), tool("long", "prepare"),
                        {"id": "research", "type": "workflow", "workflow_id": "research", "needs": ["prepare"],
                         "for_each": "steps.prepare.output.topics", "min_succeeded": 3, "on_failure": "continue"})


def test_a_live_runs_stopped_item_made_due_asks_again_for_its_held_child():
    # The scheduler could not lock item 1's child when the map failed, so it made that item due
    # (orchestrator/sub_runs.py): the next pass asks for that child again, and the item loses its due time.
    failed = step_state(MAP_MAY_FAIL, "research", S.FAILED, 1,
                        item_counts=items.ItemCounts(4, failed=2, cancelled=2).as_json())

    def passed_with(item: dict):
        state = run_state(MAP_MAY_FAIL, R.RUNNING, {
            "prepare": step_state(MAP_MAY_FAIL, "prepare", S.SUCCEEDED, 1),
            "long": step_state(MAP_MAY_FAIL, "long", S.RUNNING, 1), "research": failed,
            "research[1]": step_state(MAP_MAY_FAIL, "research[1]", S.CANCELLED, 1, **item)})
        transition = advance.on_advance(state, MAP_MAY_FAIL, counting_env(), kept={})
        assert table_violations(transition) == [] and transition.run_to is None
        return transition

    transition = passed_with({"due": True})
    assert transition.stop_children == ("research[1]",)
    assert [(m.step_id, m.target, dict(m.values)) for m in transition.moves] == [
        ("research[1]", S.CANCELLED, {"due_at": None})]
    assert passed_with({}).stop_children == ()  # not made due: nothing was held, nothing to ask


def test_an_ended_runs_stopped_step_made_due_loses_its_due_time_as_its_children_are_asked_again():
    state = run_state(CALLER, R.FAILED, {"prepare": step_state(CALLER, "prepare", S.FAILED, 1),
                                         "research": step_state(CALLER, "research", S.CANCELLED, 1, due=True)})
    transition = advance.on_advance(state, CALLER, counting_env(), kept={})
    assert transition.stop_children == ("research",)
    assert [(m.step_id, dict(m.values)) for m in transition.moves] == [("research", {"due_at": None})]


# The map as a run's retry leaves it: pending again, with the counts of its failed start (1 succeeded).
FAILED_COUNTS = items.ItemCounts(4, succeeded=1, failed=1, cancelled=2).as_json()


def test_a_map_started_again_keeps_the_items_that_succeeded_with_the_same_value():
    pending_again = {"research": step_state(MAP, "research", S.PENDING, 1, item_counts=FAILED_COUNTS)}
    with pytest.raises(advance.NeedsFacts) as needs:
        mapped(pending_again)
    assert needs.value.succeeded_items == ("research",)
    # Item 1 succeeded with "winds" (still there), item 3 with a value the list no longer holds there.
    transition = mapped(pending_again, succeeded_items={"research": {1: "winds", 3: "dunes"}})
    step = transition.after.steps["research"]
    assert step.item_counts == items.ItemCounts(4, pending=1, in_flight=2, succeeded=1).as_json()
    (write,) = transition.items
    assert (write.kind, write.keep, write.queue_first) == ("expand", (1,), 2)


def test_a_map_whose_every_item_is_kept_succeeds_at_once_with_their_outputs():
    kept = {i: topic for i, topic in enumerate(["tides", "winds", "ice", "sand"])}
    transition = mapped({"research": step_state(MAP, "research", S.PENDING, 1, item_counts=FAILED_COUNTS)},
                        succeeded_items={"research": kept})
    done = next(m for m in transition.moves if m.step_id == "research" and m.target is S.SUCCEEDED)
    assert done.values["output"] is ITEM_OUTPUTS
    assert transition.after.steps["after"].status is S.QUEUED


def test_a_map_reopened_after_it_succeeded_runs_every_item_again():
    # A person's request_changes reopens the step before the approval: its items are not kept.
    done = {"research": step_state(MAP, "research", S.SUCCEEDED, 1, item_counts=items.ItemCounts(4, succeeded=4).as_json())}
    state = run_state(MAP, R.RUNNING, {"prepare": step_state(MAP, "prepare", S.SUCCEEDED, 1), **done})
    draft = Draft(state)
    controls.reopen(draft, MAP, ["research"])
    reopened = draft.finish().after.steps["research"]
    assert reopened.status is S.PENDING and reopened.item_counts is None
    transition = mapped({"research": reopened})  # no NeedsFacts(succeeded_items): nothing to keep
    assert transition.items[0].keep == () and transition.items[0].queue_first == 2
