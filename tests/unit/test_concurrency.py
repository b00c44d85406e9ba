"""Concurrency keys in the pure core (orchestrator/core/concurrency.py): a queued run starts only while
its workflow's keys have room and is held `queued` otherwise; a step's attempt is queued only while
its key has room and waits `pending` otherwise (a retry that came due too); the worker's fast path
leaves a keyed step to the scheduler; the look wakes the waiters a pass would admit; publish refuses
keys it cannot apply; the diagnosis names the key and its holders."""

from __future__ import annotations

import pytest

from orchestrator import diagnosis
from orchestrator.core import advance, concurrency, outcome, start
from orchestrator.core.concurrency import RUN, STEP, Ask, Room, Waiter
from orchestrator.core.inputs import AttemptReport
from orchestrator.core.vocabulary import EventType
from orchestrator.definitions import parse_definition
from orchestrator.errors import DefinitionInvalid
from orchestrator.states import RunStatus, StepStatus
from tests.unit.core_fixtures import (
    RUN_ID,
    SUCCESS,
    counting_env,
    run_state,
    step_state,
    table_violations,
    tool,
)

PER_CUSTOMER = parse_definition({"name": "per customer", "concurrency": {"key": "{{ input.customer }}", "limit": 1},
                                 "steps": [tool("work")]})
TWO_KEYS = parse_definition({"name": "two keys", "concurrency": [{"key": "{{ input.customer }}", "limit": 2},
                                                                 {"key": "{{ input.region }}", "limit": 1}],
                             "steps": [tool("work")]})
KEYED_STEP = parse_definition({"name": "keyed step", "steps": [
    tool("prep"), tool("call", "prep", concurrency={"key": "vendor-{{ input.vendor }}", "limit": 2})]})
STEP_KEY = "tenant_core:vendor-acme"


def _queued(definition, run_input, **facts):
    return run_state(definition, RunStatus.QUEUED, input=run_input, **facts)


def test_a_queued_runs_first_pass_asks_for_the_room_under_its_rendered_keys():
    with pytest.raises(advance.NeedsFacts) as needs:
        advance.on_advance(_queued(TWO_KEYS, {"customer": "acme", "region": "eu"}), TWO_KEYS, counting_env())
    assert needs.value.concurrency == (Ask(RUN, "0:acme", 2), Ask(RUN, "1:eu", 1))
    # The API's first pass (core.start) leaves such a run to the scheduler: it must read the room.
    assert start.on_start(_queued(TWO_KEYS, {"customer": "acme", "region": "eu"}), TWO_KEYS, counting_env()) is None


def test_a_run_starts_while_every_key_has_room_and_holds_its_keys_from_then():
    rooms = {(RUN, "0:acme"): Room(holders=0)}
    transition = advance.on_advance(_queued(PER_CUSTOMER, {"customer": "acme"}, concurrency=rooms), PER_CUSTOMER,
                                    counting_env())
    assert transition.after.status is RunStatus.RUNNING
    assert transition.run_values["concurrency_keys"] == ["0:acme"] and transition.run_values["waiting_on"] is None
    assert [m.target for m in transition.moves] == [StepStatus.QUEUED]
    assert table_violations(transition) == []


@pytest.mark.parametrize("room", [Room(holders=1), Room(holders=0, ahead=1)], ids=["held", "an older run waits"])
def test_a_run_is_held_queued_waiting_on_concurrency_when_a_key_is_full_or_others_wait_ahead(room):
    transition = advance.on_advance(_queued(PER_CUSTOMER, {"customer": "acme"}, concurrency={(RUN, "0:acme"): room}),
                                    PER_CUSTOMER, counting_env())
    assert transition.run_to is None and transition.after.status is RunStatus.QUEUED
    assert transition.run_values["waiting_on"] == "concurrency"
    assert transition.run_values["has_work"] is False and transition.run_values["concurrency_keys"] == ["0:acme"]
    assert transition.moves == () and transition.events == ()


def test_a_run_with_several_keys_waits_for_the_room_of_each():
    rooms = {(RUN, "0:acme"): Room(holders=1), (RUN, "1:eu"): Room(holders=1)}
    held = advance.on_advance(_queued(TWO_KEYS, {"customer": "acme", "region": "eu"}, concurrency=rooms), TWO_KEYS,
                              counting_env())
    assert held.after.status is RunStatus.QUEUED  # acme has room (1 of 2), eu has none (1 of 1)
    rooms[(RUN, "1:eu")] = Room(holders=0)
    started = advance.on_advance(_queued(TWO_KEYS, {"customer": "acme", "region": "eu"}, concurrency=rooms), TWO_KEYS,
                                 counting_env())
    assert started.after.status is RunStatus.RUNNING


def test_a_key_that_does_not_render_fails_the_run_before_it_starts():
    transition = advance.on_advance(_queued(PER_CUSTOMER, {"other": 1}), PER_CUSTOMER, counting_env())
    assert transition.after.status is RunStatus.FAILED
    assert transition.run_values["error"]["code"] == "template_error"
    assert [(m.step_id, m.target) for m in transition.moves] == [("work", StepStatus.SKIPPED)]
    assert table_violations(transition) == []


def test_a_keyed_step_is_queued_holding_its_key_while_it_has_room():
    state = run_state(KEYED_STEP, RunStatus.RUNNING, {"prep": step_state(KEYED_STEP, "prep", StepStatus.SUCCEEDED, 1)},
                      input={"vendor": "acme"}, outputs={}, concurrency={(STEP, STEP_KEY): Room(holders=1)})
    transition = advance.on_advance(state, KEYED_STEP, counting_env())
    [move] = transition.moves
    assert (move.step_id, move.target, move.values["concurrency_key"], move.values["waiting_on"]) == (
        "call", StepStatus.QUEUED, STEP_KEY, None)
    assert table_violations(transition) == []


def test_a_keyed_step_without_room_stays_pending_waiting_on_concurrency_and_says_so_once():
    state = run_state(KEYED_STEP, RunStatus.RUNNING, {"prep": step_state(KEYED_STEP, "prep", StepStatus.SUCCEEDED, 1)},
                      input={"vendor": "acme"}, outputs={}, concurrency={(STEP, STEP_KEY): Room(holders=1, ahead=1)})
    transition = advance.on_advance(state, KEYED_STEP, counting_env())
    [move] = transition.moves
    assert (move.target, move.values) == (StepStatus.PENDING,
                                          {"waiting_on": "concurrency", "concurrency_key": STEP_KEY})
    [event] = transition.events
    assert (event.type, event.data) == (EventType.STEP_DEFERRED, {"reason": "concurrency", "key": "vendor-acme",
                                                                  "limit": 2})
    assert transition.after.status is RunStatus.RUNNING and transition.run_values["has_work"] is False
    # The next pass over it, with still no room, writes nothing.
    waiting = state.with_steps([transition.after.step("call")])
    assert advance.on_advance(waiting, KEYED_STEP, counting_env()).moves == ()


def test_two_ready_steps_of_one_run_share_their_keys_room_within_the_decision():
    flow = parse_definition({"name": "fan", "steps": [
        tool(f"call{i}", concurrency={"key": "shared", "limit": 2}) for i in range(3)]})
    state = run_state(flow, RunStatus.RUNNING, input={}, concurrency={(STEP, "tenant_core:shared"): Room(holders=0)})
    transition = advance.on_advance(state, flow, counting_env())
    assert [(m.step_id, m.target) for m in transition.moves] == [
        ("call0", StepStatus.QUEUED), ("call1", StepStatus.QUEUED), ("call2", StepStatus.PENDING)]


def test_a_keyed_retry_that_came_due_without_room_waits_pending_for_its_next_attempt():
    retrying = step_state(KEYED_STEP, "call", StepStatus.RETRYING, 1, due=True)
    state = run_state(KEYED_STEP, RunStatus.RUNNING, {"prep": step_state(KEYED_STEP, "prep", StepStatus.SUCCEEDED, 1),
                                                      "call": retrying},
                      input={"vendor": "acme"}, outputs={}, concurrency={(STEP, STEP_KEY): Room(holders=2)})
    transition = advance.on_advance(state, KEYED_STEP, counting_env())
    assert [(m.target, m.values.get("waiting_on")) for m in transition.moves] == [(StepStatus.PENDING, "concurrency")]
    assert table_violations(transition) == []
    later = state.replace(concurrency={(STEP, STEP_KEY): Room(holders=1)}).with_steps([transition.after.step("call")])
    [queued] = advance.on_advance(later, KEYED_STEP, counting_env()).moves
    assert (queued.target, queued.message.attempt) == (StepStatus.QUEUED, 2)


def test_the_worker_leaves_a_keyed_next_step_to_the_scheduler_and_rings_when_a_holder_ends():
    running = run_state(KEYED_STEP, RunStatus.RUNNING, {"prep": step_state(KEYED_STEP, "prep", StepStatus.RUNNING, 1)},
                        input={"vendor": "acme"}, others_succeeded=False)
    report = outcome.on_report(running, KEYED_STEP, AttemptReport(RUN_ID, "prep", 1, SUCCESS, queue_ready=True),
                               counting_env())
    assert [m.step_id for m in report.moves] == ["prep"] and report.run_values["has_work"] is True
    holder = run_state(KEYED_STEP, RunStatus.RUNNING, {"prep": step_state(KEYED_STEP, "prep", StepStatus.SUCCEEDED, 1),
                                                       "call": step_state(KEYED_STEP, "call", StepStatus.RUNNING, 1)},
                       input={"vendor": "acme"}, others_succeeded=True, outputs={})
    ended = outcome.on_report(holder, KEYED_STEP, AttemptReport(RUN_ID, "call", 1, SUCCESS), counting_env())
    assert ended.after.status is RunStatus.SUCCEEDED and ended.run_values["has_work"] is True


def test_the_look_wakes_the_waiters_a_pass_would_admit_in_order():
    def waiter(run_id, holders, limit=2, key=("run", "t", "wf", "0:acme"), flagged=False):
        return Waiter(run_id, run_id, key, limit, holders, flagged)
    # One place free (1 of 2 held): the first waiter in line only.
    assert concurrency.to_wake([waiter("r1", 1), waiter("r2", 1)]) == ["r1"]
    # A run waits for each of its keys: r1 fits acme but not eu.
    eu = ("run", "t", "wf", "1:eu")
    assert concurrency.to_wake([waiter("r1", 0), waiter("r1", 1, limit=1, key=eu)]) == []
    # A run flagged already is not flagged again, but still takes its place in line.
    assert concurrency.to_wake([waiter("r1", 0, flagged=True), waiter("r2", 0), waiter("r3", 0)]) == ["r2"]
    # Steps: a run is woken for any one of its steps that fits.
    steps = [Waiter("r1", "r1/a", ("step", "k"), 1, 0), Waiter("r1", "r1/b", ("step", "k"), 1, 0)]
    assert concurrency.to_wake(steps) == ["r1"]


@pytest.mark.parametrize(("definition", "problem"), [
    ({"concurrency": {"key": "{{ steps.a.output }}", "limit": 1}, "steps": [tool("a")]},
     "concurrency.key: a workflow's concurrency key is rendered from the run's input before any step runs, so it "
     "may read only 'input', not ['steps']"),
    ({"concurrency": {"key": "{{ input.x", "limit": 1}, "steps": [tool("a")]}, "concurrency.key: template syntax"),
    ({"concurrency": {"key": "k", "limit": 0}, "steps": [tool("a")]}, "concurrency.limit"),
    ({"steps": [{"id": "t", "type": "timer", "duration_s": 1, "concurrency": {"key": "k", "limit": 1}}]},
     "steps.0.concurrency: a 'timer' step holds no worker"),
    ({"steps": [tool("a", for_each="[1, 2]", concurrency={"key": "k", "limit": 1})]},
     "steps.0.concurrency: a for_each step cannot take a concurrency key; bound its items with max_parallel"),
    ({"concurrency": {"key": "k", "limit": 1, "per": "x"}, "steps": [tool("a")]}, "concurrency.per"),
])
def test_publish_refuses_a_key_it_cannot_apply_with_a_message_naming_the_field(definition, problem):
    with pytest.raises(DefinitionInvalid) as refused:
        parse_definition({"name": "bad", **definition})
    assert any(problem in p for p in refused.value.details["problems"]), refused.value.details["problems"]


def test_the_diagnosis_names_the_key_its_limit_and_the_runs_holding_it():
    causes = diagnosis.diagnose("run_w", RunStatus.QUEUED, None, [], approvals={}, questions={}, consumers=None,
                                concurrency=[diagnosis.KeyWait(None, "acme", 1, ("run_holder",))])
    [cause] = causes  # not "no scheduler has picked the run up yet": one has, and holds it
    assert cause.kind == "concurrency" and cause.step_id is None
    assert "'acme'" in cause.message and "limit 1" in cause.message and "run_holder" in cause.message
    step = diagnosis.diagnose("run_s", RunStatus.RUNNING, None, [], approvals={}, questions={}, consumers=None,
                              concurrency=[diagnosis.KeyWait("call", "vendor-acme", 2, ("run_a", "run_b"))])
    assert [(c.kind, c.step_id) for c in step] == [("concurrency", "call")] and "run_a, run_b" in step[0].message
