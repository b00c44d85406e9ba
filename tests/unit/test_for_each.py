"""For-each steps in the pure core: the start over a list, max_parallel, the items' outcomes counted
on their step, k-of-n (min_succeeded), the step's end, the checks at publish, and the diagnosis
naming a silent worker that holds items."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import diagnosis
from orchestrator.core import advance, controls, items, outcome, people
from orchestrator.core.inputs import Actor, AttemptReport, Control, Defer
from orchestrator.core.transition import ITEM_OUTPUTS
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.errors import DefinitionInvalid
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import (
    PERMANENT_ERROR,
    RETRYABLE_ERROR,
    SUCCESS,
    counting_env,
    run_state,
    step_state,
    table_violations,
    tool,
    workflow,
)

R, S = RunStatus, StepStatus

SUMMARISE = workflow(
    "summarise",
    tool("fetch"),
    tool("summarise", "fetch", args={"text": "{{ item }} #{{ index }}"}, for_each="steps.fetch.output.documents",
         max_parallel=3, min_succeeded=4),
    tool("report", "summarise"),
)


def started(documents, definition=SUMMARISE, **env):
    state = run_state(definition, R.RUNNING, {"fetch": step_state(definition, "fetch", S.SUCCEEDED, 1)},
                      outputs={"fetch": {"documents": documents}})
    transition = advance.on_advance(state, definition, dataclasses.replace(counting_env(), **env), kept={})
    assert table_violations(transition) == []
    return transition


def item_report(counts: items.ItemCounts, result, *, index: int = 0, run=R.RUNNING, attempt: int = 1):
    """An item's report, with its step running at ``counts``."""
    item_id = items.item_id("summarise", index)
    steps = {
        "fetch": step_state(SUMMARISE, "fetch", S.SUCCEEDED, 1),
        "summarise": step_state(SUMMARISE, "summarise", S.RUNNING, 1, item_counts=counts.as_json()),
        item_id: step_state(SUMMARISE, item_id, S.RUNNING, attempt),
    }
    state = run_state(SUMMARISE, run, steps, complete=not result.succeeded)
    transition = outcome.on_report(state, SUMMARISE, AttemptReport(state.id, item_id, attempt, result),
                                   counting_env())
    assert table_violations(transition) == []
    return transition


def test_a_ready_for_each_step_starts_its_items_and_queues_max_parallel_of_them():
    transition = started(["a", "b", "c", "d", "e"])
    step = transition.after.steps["summarise"]
    assert step.status is S.RUNNING and step.attempt == 1
    assert step.item_counts == {"total": 5, "pending": 2, "in_flight": 3, "succeeded": 0, "failed": 0, "cancelled": 0}
    (write,) = transition.items
    assert (write.kind, write.values, write.queue_first) == ("expand", ("a", "b", "c", "d", "e"), 3)
    assert transition.messages == []  # the item rows' messages come from the writer's set-based queueing


@pytest.mark.parametrize(("documents", "code"), [
    ({"not": "a list"}, ErrorCode.INVALID_FOR_EACH),
    (list(range(6)), ErrorCode.TOO_MANY_ITEMS),
    (["only", "three", "items"], ErrorCode.TOO_FEW_SUCCEEDED),  # min_succeeded 4 of 3 can never happen
])
def test_a_list_the_step_cannot_run_over_fails_it_and_its_run(documents, code):
    transition = started(documents, max_items=5)
    assert transition.after.steps["summarise"].status is S.FAILED
    assert transition.run_to is R.FAILED
    failed = next(e for e in transition.events if e.type is EventType.STEP_FAILED)
    assert failed.data["error"]["code"] == code.value
    assert transition.items == ()


def test_an_empty_list_succeeds_at_once_with_an_empty_output_and_its_dependent_is_queued():
    transition = started([], definition=workflow("empty", tool("fetch"), tool("each", "fetch", for_each="steps.fetch.output.documents"),
                                                 tool("after", "each")))
    assert transition.after.steps["each"].status is S.SUCCEEDED
    assert next(m for m in transition.moves if m.step_id == "each" and m.target is S.SUCCEEDED).values["output"] == []
    assert transition.after.steps["after"].status is S.QUEUED


def test_an_item_that_succeeds_is_counted_and_the_next_pending_item_queued():
    counts = items.ItemCounts(total=5, pending=2, in_flight=3)
    transition = item_report(counts, SUCCESS)
    assert transition.after.steps["summarise[0]"].status is S.SUCCEEDED
    assert transition.after.steps["summarise"].item_counts == {
        "total": 5, "pending": 1, "in_flight": 3, "succeeded": 1, "failed": 0, "cancelled": 0}
    (write,) = transition.items
    assert (write.kind, write.step_id, write.queue_first) == ("queue", "summarise", 1)
    assert transition.run_to is None  # an item's failure or success never decides the run by itself


def test_an_item_retries_like_a_step_and_keeps_its_place_in_flight():
    transition = item_report(items.ItemCounts(total=5, pending=2, in_flight=3), RETRYABLE_ERROR)
    assert transition.after.steps["summarise[0]"].status is S.RETRYING
    assert transition.after.steps["summarise"].item_counts == items.ItemCounts(5, 2, 3).as_json()
    assert transition.items == ()


def test_the_last_item_settles_its_step_with_the_items_outputs_and_leaves_the_rest_to_the_scheduler():
    transition = item_report(items.ItemCounts(total=5, in_flight=1, succeeded=3, failed=1), SUCCESS)
    done = next(m for m in transition.moves if m.step_id == "summarise" and m.target is S.SUCCEEDED)
    assert done.values["output"] is ITEM_OUTPUTS
    assert transition.wakes_scheduler and transition.run_to is None


def test_k_of_n_fails_the_step_as_soon_as_k_cannot_be_reached_and_stops_the_items_in_flight():
    # 5 items, 4 must succeed: the second failure makes it impossible (at most 3 can succeed).
    transition = item_report(items.ItemCounts(total=5, pending=1, in_flight=3, failed=1), PERMANENT_ERROR)
    assert transition.after.steps["summarise"].status is S.FAILED
    failed = [e for e in transition.events if e.type is EventType.STEP_FAILED and e.step_id == "summarise"]
    assert failed[0].data["error"]["code"] == ErrorCode.TOO_FEW_SUCCEEDED.value
    assert [(w.kind, w.step_id) for w in transition.items] == [("stop", "summarise")]
    assert transition.run_to is R.FAILED  # fail-fast: on_failure is fail_run
    assert transition.after.steps["report"].status is S.SKIPPED


def test_an_item_failing_for_good_within_k_of_n_lets_the_others_go_on():
    transition = item_report(items.ItemCounts(total=5, pending=2, in_flight=3), PERMANENT_ERROR)
    assert transition.after.steps["summarise[0]"].status is S.FAILED
    assert transition.after.steps["summarise"].status is S.RUNNING
    assert transition.run_to is None


def test_an_item_of_a_paused_run_is_put_back_and_resumed_in_order():
    counts = items.ItemCounts(total=5, pending=2, in_flight=3)
    steps = {"fetch": step_state(SUMMARISE, "fetch", S.SUCCEEDED, 1),
             "summarise": step_state(SUMMARISE, "summarise", S.RUNNING, 1, item_counts=counts.as_json()),
             "summarise[2]": step_state(SUMMARISE, "summarise[2]", S.QUEUED, 1)}
    deferred = controls.on_defer(run_state(SUMMARISE, R.PAUSED, steps), Defer("summarise[2]", 1))
    assert deferred.after.steps["summarise[2]"].status is S.PENDING
    assert deferred.after.steps["summarise"].item_counts == items.ItemCounts(5, 3, 2).as_json()
    resumed = advance.on_advance(deferred.after.replace(status=R.RUNNING), SUMMARISE, counting_env(), kept={})
    assert [(w.kind, w.queue_first) for w in resumed.items] == [("queue", 1)]


def test_a_cancelled_run_stops_its_for_each_steps_items():
    steps = {"fetch": step_state(SUMMARISE, "fetch", S.SUCCEEDED, 1),
             "summarise": step_state(SUMMARISE, "summarise", S.RUNNING, 1,
                                     item_counts=items.ItemCounts(5, 2, 3).as_json())}
    transition = controls.on_control(run_state(SUMMARISE, R.RUNNING, steps), SUMMARISE,
                                     Control("cancel", Actor("tok")))
    assert transition.after.steps["summarise"].status is S.CANCELLED
    assert [(w.kind, w.step_id) for w in transition.items] == [("stop", "summarise")]


@pytest.mark.parametrize(("step", "problem"), [
    (tool("each", "fetch", for_each="steps.fetch.output.items +"), "steps.1.for_each: expression syntax error"),
    (tool("each", for_each="steps.fetch.output"), "which is not upstream"),
    (tool("each", "fetch", max_parallel=2), "steps.1.max_parallel: only a step with for_each may set it"),
    ({"id": "each", "type": "approval", "needs": ["fetch"], "for_each": "steps.fetch.output"},
     "a 'approval' step cannot run for each item"),
])
def test_publish_refuses_a_for_each_it_cannot_run(step, problem):
    with pytest.raises(DefinitionInvalid) as raised:
        workflow("bad", tool("fetch"), step)
    assert any(problem in p for p in raised.value.details["problems"]), raised.value.details["problems"]


def test_an_agent_item_answered_by_a_person_is_queued_again_at_once():
    agents = workflow("ask", {"id": "each", "type": "agent", "for_each": "input.tickets", "prompt": "{{ item }}"})
    counts = items.ItemCounts(total=3, pending=1, in_flight=2)
    steps = {"each": step_state(agents, "each", S.RUNNING, 1, item_counts=counts.as_json()),
             "each[1]": step_state(agents, "each[1]", S.WAITING, 1, waiting_on="question")}
    transition = people.on_answer(run_state(agents, R.RUNNING, steps), agents, step_id="each[1]", question_id="q_1",
                                  answer="yes", actor=Actor("tok"), env=counting_env())
    assert table_violations(transition) == []
    assert transition.after.steps["each[1]"].status is S.QUEUED
    assert [m.step_id for m in transition.messages] == ["each[1]"]
    assert transition.after.steps["each"].item_counts == counts.as_json()  # still in flight: counts unchanged


# The diagnosis of a for-each step whose items a dead worker holds (orchestrator/diagnosis.py).
LEASED = datetime(2026, 5, 1, 12, 0, 25, tzinfo=UTC)


def running_item(index: int, worker: str) -> diagnosis.StepFacts:
    return diagnosis.StepFacts(step_id=f"each[{index}]", type="tool", status=S.RUNNING, queue="steps", attempt=1,
                               worker=worker, lease_expires_at=LEASED + timedelta(seconds=index))


def test_the_diagnosis_of_a_for_each_step_names_the_silent_worker_holding_its_items():
    held = (running_item(0, "w-dead@box:11"), running_item(1, "w-live@box:12"), running_item(2, "w-dead@box:13"))
    step = diagnosis.StepFacts(step_id="each", type="tool", status=S.RUNNING, queue="steps", attempt=1,
                               items_running=held)
    assert diagnosis.workers_running([step]) == {"w-dead@box", "w-live@box"}  # asked about: the items' workers
    [cause] = diagnosis.diagnose("run_1", R.RUNNING, None, [step], approvals={}, questions={}, consumers=None,
                                 silent_workers={"w-dead@box": LEASED - timedelta(seconds=30)})
    assert (cause.kind, cause.step_id) == ("worker_lost", "each")
    assert cause.message == (
        "worker w-dead@box stopped sending heartbeats at 2026-05-01T11:59:55.000Z holding 2 items (each[0], each[2]), "
        "the last lease expiring at 2026-05-01T12:00:27.000Z: those items of step 'each' will be recovered when "
        "their leases expire")
    assert diagnosis.diagnose("run_1", R.RUNNING, None, [step], approvals={}, questions={}, consumers=None,
                              silent_workers={}) == []
