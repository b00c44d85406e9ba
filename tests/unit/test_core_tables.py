"""The pure core (orchestrator/core) walked over every pair of the transition tables (orchestrator/states.py):
every run status × every control, every step status × every kind of worker report, the scheduler's
pass over every run status and every step status with its due / lease flags, and Draft's moves over
every pair of statuses."""

from __future__ import annotations

from itertools import product

import pytest

from orchestrator import states
from orchestrator.core import advance, controls, outcome
from orchestrator.core.inputs import Actor, AttemptReport, Control
from orchestrator.core.transition import NEXT_ATTEMPT, NOW, Draft, DueIn, Request
from orchestrator.core.vocabulary import ErrorCode, EventType, SkipReason, WaitsOn
from orchestrator.messages import StepMessage, task_id
from orchestrator.states import (
    CONTROLS,
    IN_FLIGHT_STEP,
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    TERMINAL_RUN,
    InvalidTransition,
    RunStatus,
    StepStatus,
)
from tests.unit.core_fixtures import (
    APPROVAL_CALL,
    PERMANENT_ERROR,
    RETRYABLE_ERROR,
    RUN_ID,
    STOPPED,
    SUCCESS,
    counting_env,
    run_state,
    step_state,
    suspended,
    table_violations,
    tool,
    workflow,
)

R, S = RunStatus, StepStatus
ACTOR = Actor("tok")


def moved_to(transition) -> dict[str, StepStatus]:
    """Step id -> the status its (last) move in ``transition`` goes to."""
    return {move.step_id: move.target for move in transition.moves}


def the_move(transition, step_id: str):
    (move,) = [m for m in transition.moves if m.step_id == step_id]
    return move


def event_types(transition) -> list[EventType]:
    return [event.type for event in transition.events]


# --- every run status × every control --------------------------------------------------------------

GATED = workflow("gated", tool("work"), {"id": "gate", "type": "approval", "needs": ["work"]})
# What the steps of a run at each status plausibly are: (status, attempt) of `work` and of `gate`.
GATED_LAYOUT = {
    R.QUEUED: ((S.PENDING, 0), (S.PENDING, 0)),
    R.RUNNING: ((S.RUNNING, 1), (S.PENDING, 0)),
    R.WAITING: ((S.SUCCEEDED, 1), (S.WAITING, 1)),
    R.PAUSED: ((S.QUEUED, 1), (S.PENDING, 0)),
    R.SUCCEEDED: ((S.SUCCEEDED, 1), (S.SUCCEEDED, 1)),
    R.FAILED: ((S.FAILED, 3), (S.SKIPPED, 0)),
    R.CANCELLED: ((S.CANCELLED, 1), (S.SKIPPED, 0)),
}


def gated_run(run_status: RunStatus):
    (work, work_attempt), (gate, gate_attempt) = GATED_LAYOUT[run_status]
    waiting_on = WaitsOn.APPROVAL.value if gate is S.WAITING else None
    return run_state(GATED, run_status, {
        "work": step_state(GATED, "work", work, work_attempt),
        "gate": step_state(GATED, "gate", gate, gate_attempt, waiting_on=waiting_on),
    }, waiting_on=waiting_on)


CONTROL_OPTIONS = {
    "pause": {},
    "resume": {"limits": {"max_steps": 10}},
    "cancel": {"mode": "immediate", "reason": "no longer needed"},
    "retry": {},
    "rerun": {"new_run_id": "run_again"},
}
CONTROL_EVENT = {"pause": EventType.RUN_PAUSED, "resume": EventType.RUN_RESUMED, "cancel": EventType.RUN_CANCELLED,
                 "retry": EventType.RUN_RETRIED, "rerun": EventType.RUN_RERUN}
ALLOWED_CONTROLS = [(s, a) for s, a in product(RunStatus, CONTROLS) if s in CONTROLS[a].allowed_from]
REFUSED_CONTROLS = [(s, a) for s, a in product(RunStatus, CONTROLS) if s not in CONTROLS[a].allowed_from]


@pytest.mark.parametrize(("run_status", "action"), ALLOWED_CONTROLS)
def test_an_allowed_control_moves_the_run_to_its_target(run_status, action):
    target = states.apply_control(action, run_status)
    transition = controls.on_control(gated_run(run_status), GATED, Control(action, ACTOR, CONTROL_OPTIONS[action]))
    assert transition.run_to is target
    assert transition.after.status is (target or run_status)
    assert table_violations(transition) == []
    last = transition.events[-1]
    assert (last.type, last.data["token_id"], last.step_id) == (CONTROL_EVENT[action], "tok", None)


@pytest.mark.parametrize(("run_status", "action"), REFUSED_CONTROLS)
def test_a_refused_control_is_an_invalid_transition_naming_where_it_is_allowed(run_status, action):
    with pytest.raises(InvalidTransition) as refused:
        states.apply_control(action, run_status)
    assert refused.value.action == action
    assert refused.value.allowed_from == sorted(str(s) for s in CONTROLS[action].allowed_from)


@pytest.mark.parametrize("run_status", sorted(CONTROLS["rerun"].allowed_from))
def test_rerun_changes_nothing_but_notes_the_new_run(run_status):
    transition = controls.on_control(gated_run(run_status), GATED, Control("rerun", ACTOR, {"new_run_id": "run_2"}))
    assert (transition.run_to, transition.moves, transition.run_values) == (None, (), {})
    assert [(e.type, dict(e.data)) for e in transition.events] == [
        (EventType.RUN_RERUN, {"new_run_id": "run_2", "token_id": "tok", "triggered_by": None})]


def test_pause_only_moves_the_run():
    transition = controls.on_control(gated_run(R.RUNNING), GATED, Control("pause", ACTOR))
    assert (transition.run_to, transition.moves, event_types(transition)) == (R.PAUSED, (), [EventType.RUN_PAUSED])


def test_resume_raises_limits_wakes_the_scheduler_and_redispatches_steps_stopped_at_the_budget():
    flat = workflow("flat", tool("over_budget"), tool("busy"))
    paused = run_state(flat, R.PAUSED, {
        "over_budget": step_state(flat, "over_budget", S.WAITING, 2, waiting_on=WaitsOn.BUDGET.value),
        "busy": step_state(flat, "busy", S.RUNNING, 1),
    }, limits={"max_steps": 5, "max_tool_calls": 3})
    transition = controls.on_control(paused, flat, Control("resume", ACTOR, {"limits": {"max_steps": 10}}))
    assert transition.run_to is R.RUNNING
    assert dict(transition.run_values) == {"has_work": True, "limits": {"max_steps": 10, "max_tool_calls": 3}}
    assert moved_to(transition) == {"over_budget": S.PENDING}
    assert transition.after.step("over_budget").waiting_on is None


IMMEDIATE_CANCEL_STOPS = {S.QUEUED, S.RUNNING, S.RETRYING, S.WAITING}
GRACEFUL_CANCEL_STOPS = {S.QUEUED, S.RETRYING, S.WAITING}  # running attempts finish and are recorded
FLAT = workflow("flat", tool("subject"), tool("other"))


@pytest.mark.parametrize("mode", ["immediate", "graceful"])
@pytest.mark.parametrize("step_status", list(StepStatus))
def test_cancel_stops_in_flight_steps_and_skips_pending_ones(mode, step_status):
    running = run_state(FLAT, R.RUNNING, {"subject": step_state(FLAT, "subject", step_status, 1),
                                          "other": step_state(FLAT, "other", S.SUCCEEDED, 1)})
    transition = controls.on_control(running, FLAT, Control("cancel", ACTOR, {"mode": mode, "reason": "stop"}))
    stops = IMMEDIATE_CANCEL_STOPS if mode == "immediate" else GRACEFUL_CANCEL_STOPS
    expected = S.CANCELLED if step_status in stops else S.SKIPPED if step_status is S.PENDING else None
    assert moved_to(transition) == ({"subject": expected} if expected else {})
    assert transition.revoke == ([task_id(RUN_ID, "subject", 1)]
                                 if expected is S.CANCELLED and step_status in (S.QUEUED, S.RUNNING) else [])
    if expected is S.SKIPPED:
        assert the_move(transition, "subject").values["skipped_reason"] == SkipReason.RUN_CANCELLED.value
    assert transition.run_to is R.CANCELLED and transition.close_requests
    assert transition.run_values["error"] == {"code": ErrorCode.CANCELLED.value, "message": "stop", "step_id": None}
    assert table_violations(transition) == []


@pytest.mark.parametrize("step_status", list(StepStatus))
def test_retry_reopens_the_steps_that_did_not_succeed_with_a_fresh_budget(step_status):
    failed = run_state(FLAT, R.FAILED, {"subject": step_state(FLAT, "subject", step_status, 3),
                                        "other": step_state(FLAT, "other", S.SUCCEEDED, 1)}, attempt=1)
    transition = controls.on_control(failed, FLAT, Control("retry", ACTOR))
    reopened = step_status in (S.FAILED, S.CANCELLED, S.SKIPPED)
    assert moved_to(transition) == ({"subject": S.PENDING} if reopened else {})
    if reopened:
        assert the_move(transition, "subject").values["max_attempts"] == 3 + 3  # attempts keep counting
    assert transition.run_to is R.QUEUED
    assert transition.run_values["attempt"] == 2 and transition.run_values["has_work"] is True
    assert transition.events[-1].data["steps"] == (["subject"] if reopened else [])


# --- every step status × every kind of worker report ----------------------------------------------

# kind -> (outcome, attempt reported of the default budget of 3, the reported step's target)
REPORT_KINDS = {
    "success": (SUCCESS, 1, S.SUCCEEDED),
    "retryable_with_attempts_left": (RETRYABLE_ERROR, 1, S.RETRYING),
    "retryable_with_none_left": (RETRYABLE_ERROR, 3, S.FAILED),
    "permanent_error": (PERMANENT_ERROR, 1, S.FAILED),
    "cancelled": (STOPPED, 1, S.CANCELLED),
    "suspended_question": (suspended(WaitsOn.QUESTION.value), 1, S.WAITING),
    "suspended_approval": (suspended(WaitsOn.APPROVAL.value), 1, S.WAITING),
    "suspended_budget": (suspended(WaitsOn.BUDGET.value), 1, S.WAITING),
}
NOT_RUNNING = [s for s in StepStatus if s is not S.RUNNING]


def report_on(step_status: StepStatus, kind: str, *, reported_attempt: int | None = None,
              run_status: RunStatus = R.RUNNING):
    result, attempt, _ = REPORT_KINDS[kind]
    state = run_state(FLAT, run_status, {"subject": step_state(FLAT, "subject", step_status, attempt),
                                         "other": step_state(FLAT, "other", S.RUNNING, 1)}, others_succeeded=False)
    report = AttemptReport(RUN_ID, "subject", attempt if reported_attempt is None else reported_attempt, result)
    return outcome.on_report(state, FLAT, report, counting_env())


@pytest.mark.parametrize("kind", list(REPORT_KINDS))
@pytest.mark.parametrize("step_status", NOT_RUNNING)
def test_a_report_on_a_step_that_is_not_running_is_stale(step_status, kind):
    assert report_on(step_status, kind) is None


@pytest.mark.parametrize("kind", list(REPORT_KINDS))
@pytest.mark.parametrize("off_by", [-1, 1])
def test_a_report_of_another_attempt_is_stale(kind, off_by):
    assert report_on(S.RUNNING, kind, reported_attempt=REPORT_KINDS[kind][1] + off_by) is None


@pytest.mark.parametrize("kind", list(REPORT_KINDS))
def test_a_running_steps_report_moves_it_guarded_on_its_attempt(kind):
    _, attempt, target = REPORT_KINDS[kind]
    transition = report_on(S.RUNNING, kind)
    move = transition.moves[0]
    assert (move.step_id, move.target, move.from_, move.attempt) == ("subject", target, {S.RUNNING}, attempt)
    assert transition.after.step("subject").status is target
    assert table_violations(transition) == []


SIBLINGS = workflow(
    "siblings", tool("subject"), tool("queued_sib"), tool("running_sib"), tool("retrying_sib"),
    {"id": "waiting_sib", "type": "timer", "duration_s": 60}, tool("pending_sib", "subject"), tool("succeeded_sib"),
)
SIBLING_STATUSES = {"queued_sib": (S.QUEUED, 1), "running_sib": (S.RUNNING, 2), "retrying_sib": (S.RETRYING, 1),
                    "waiting_sib": (S.WAITING, 1), "pending_sib": (S.PENDING, 0), "succeeded_sib": (S.SUCCEEDED, 1)}


def siblings_run(run_status: RunStatus, subject_attempt: int, **facts):
    steps = {s: step_state(SIBLINGS, s, status, attempt) for s, (status, attempt) in SIBLING_STATUSES.items()}
    steps["subject"] = step_state(SIBLINGS, "subject", S.RUNNING, subject_attempt)
    return run_state(SIBLINGS, run_status, steps, **facts)


@pytest.mark.parametrize("run_status", [R.RUNNING, R.WAITING, R.PAUSED])
@pytest.mark.parametrize("kind", ["retryable_with_none_left", "permanent_error"])
def test_a_step_failing_for_good_fails_its_run_fast(kind, run_status):
    result, attempt, _ = REPORT_KINDS[kind]
    report = AttemptReport(RUN_ID, "subject", attempt, result)
    transition = outcome.on_report(siblings_run(run_status, attempt), SIBLINGS, report, counting_env())
    assert transition.run_to is R.FAILED
    assert moved_to(transition) == {"subject": S.FAILED, "queued_sib": S.CANCELLED, "running_sib": S.CANCELLED,
                                    "retrying_sib": S.CANCELLED, "waiting_sib": S.CANCELLED,
                                    "pending_sib": S.SKIPPED}
    assert sorted(transition.revoke) == [task_id(RUN_ID, "queued_sib", 1), task_id(RUN_ID, "running_sib", 2)]
    assert the_move(transition, "pending_sib").values["skipped_reason"] == SkipReason.BLOCKED.value
    assert the_move(transition, "running_sib").values["error"]["code"] == ErrorCode.RUN_STOPPED.value
    assert transition.run_values["error"] == {"code": "step_error", "message": result.error.message,
                                              "step_id": "subject"}
    assert transition.close_requests and event_types(transition)[-1] is EventType.RUN_FAILED
    assert not any(s.status is S.PENDING or s.status in IN_FLIGHT_STEP for s in transition.after.steps.values())
    assert table_violations(transition) == []


@pytest.mark.parametrize(("attempt", "max_attempts", "delay_s"), [
    (1, 3, 0.75),  # exponential from 1 s, jitter keeps the upper half: 0.5 + 0.5 * 0.5
    (2, 3, 1.5),
    (4, 6, 0.75),  # reopened after 3 attempts with a fresh budget: its first attempt of the new budget
], ids=["first", "second", "reopened"])
def test_a_retryable_error_with_attempts_left_retries_after_a_backoff(attempt, max_attempts, delay_s):
    state = run_state(FLAT, R.RUNNING, {"subject": step_state(FLAT, "subject", S.RUNNING, attempt).moved(
        max_attempts=max_attempts)})
    report = AttemptReport(RUN_ID, "subject", attempt, RETRYABLE_ERROR)
    transition = outcome.on_report(state, FLAT, report, counting_env())
    move = transition.moves[0]
    assert (move.target, move.values["due_at"]) == (S.RETRYING, DueIn(delay_s))
    assert transition.events[0].data["next_attempt"] == attempt + 1
    assert (transition.run_to, transition.run_values["has_work"]) == (None, True)


def test_an_attempt_stopped_by_its_run_is_cancelled_and_the_run_goes_on():
    transition = report_on(S.RUNNING, "cancelled")
    assert (transition.run_to, moved_to(transition)) == (None, {"subject": S.CANCELLED})
    assert transition.events[0].data == {"reason": ErrorCode.RUN_STOPPED.value}


@pytest.mark.parametrize(("kind", "request_"), [
    ("suspended_question", Request("question", "q_1", "subject", "waiting on question")),
    ("suspended_approval", Request("approval", "apr_1", "subject", "waiting on approval", APPROVAL_CALL)),
])
def test_a_suspension_on_a_person_opens_a_request_and_the_run_goes_on(kind, request_):
    transition = report_on(S.RUNNING, kind)
    assert transition.requests == (request_,)
    assert transition.run_to is None and transition.after.step("subject").waiting_on == request_.kind


@pytest.mark.parametrize("run_status", [R.RUNNING, R.WAITING])
def test_a_suspension_on_the_budget_pauses_the_run(run_status):
    transition = report_on(S.RUNNING, "suspended_budget", run_status=run_status)
    assert (transition.run_to, transition.requests) == (R.PAUSED, ())
    assert event_types(transition) == [EventType.STEP_WAITING, EventType.RUN_PAUSED]
    assert transition.after.step("subject").waiting_on == WaitsOn.BUDGET.value


CHAIN = workflow("chain", tool("a"), tool("b", "a"))
JOIN = workflow("join", tool("a"), tool("b", "a"), tool("c", "a"))  # sinks b and c


@pytest.mark.parametrize(("definition", "steps", "outputs", "run_output"), [
    (FLAT, {"other": S.SUCCEEDED}, {"other": 7}, {"subject": SUCCESS.output, "other": 7}),
    (CHAIN, {"a": S.SUCCEEDED}, {"a": 1}, {"b": SUCCESS.output}),
    (JOIN, {"a": S.SUCCEEDED, "c": S.SUCCEEDED}, {"a": 1, "c": 3}, {"b": SUCCESS.output, "c": 3}),
], ids=["flat", "chain", "join"])
def test_the_last_steps_success_succeeds_the_run_with_the_sinks_outputs(definition, steps, outputs, run_output):
    last = next(s.id for s in definition.steps if s.id not in steps)
    state = run_state(definition, R.RUNNING, {
        **{s: step_state(definition, s, status, 1) for s, status in steps.items()},
        last: step_state(definition, last, S.RUNNING, 1),
    }, others_succeeded=True, outputs=outputs)
    transition = outcome.on_report(state, definition, AttemptReport(RUN_ID, last, 1, SUCCESS), counting_env())
    assert transition.run_to is R.SUCCEEDED
    assert transition.run_values["output"] == run_output and transition.run_values["has_work"] is False
    assert event_types(transition)[-1] is EventType.RUN_SUCCEEDED


def test_a_success_that_is_not_the_last_leaves_the_run_to_the_scheduler():
    state = run_state(CHAIN, R.RUNNING, {"a": step_state(CHAIN, "a", S.RUNNING, 1)}, others_succeeded=False)
    transition = outcome.on_report(state, CHAIN, AttemptReport(RUN_ID, "a", 1, SUCCESS), counting_env())
    assert (transition.run_to, moved_to(transition), transition.run_values["has_work"]) == (
        None, {"a": S.SUCCEEDED}, True)


DIAMOND = workflow("diamond", tool("a"), tool("b", "a"), tool("c", "a"), tool("d", "b", "c"))


@pytest.mark.parametrize(("reported", "others", "queued"), [
    ("a", {"b": S.PENDING, "c": S.PENDING, "d": S.PENDING}, ["b", "c"]),
    ("c", {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "d": S.PENDING}, ["d"]),
    ("c", {"a": S.SUCCEEDED, "b": S.RUNNING, "d": S.PENDING}, []),
], ids=["fan-out", "join-complete", "join-incomplete"])
def test_a_success_with_queue_ready_queues_its_ready_dependents_as_optional_moves(reported, others, queued):
    steps = {s: step_state(DIAMOND, s, status, 0 if status is S.PENDING else 1) for s, status in others.items()}
    steps[reported] = step_state(DIAMOND, reported, S.RUNNING, 1)
    state = run_state(DIAMOND, R.RUNNING, steps, others_succeeded=False)
    report = AttemptReport(RUN_ID, reported, 1, SUCCESS, queue_ready=True)
    transition = outcome.on_report(state, DIAMOND, report, counting_env())
    dependents = [m for m in transition.moves if m.step_id != reported]
    assert [(m.step_id, m.target, m.optional) for m in dependents] == [(s, S.QUEUED, True) for s in queued]
    assert [m.message for m in dependents] == [StepMessage(RUN_ID, s, 1, "default", 300) for s in queued]
    assert all(e.if_moved for e in transition.events if e.type is EventType.STEP_QUEUED)
    # The scheduler is woken only when the report queued nothing itself.
    assert transition.run_values.get("has_work", False) is not bool(queued)


def test_queue_ready_leaves_a_dependent_that_waits_in_the_database_to_the_scheduler():
    gated = run_state(GATED, R.RUNNING, {"work": step_state(GATED, "work", S.RUNNING, 1)}, others_succeeded=False)
    report = AttemptReport(RUN_ID, "work", 1, SUCCESS, queue_ready=True)
    transition = outcome.on_report(gated, GATED, report, counting_env())
    assert moved_to(transition) == {"work": S.SUCCEEDED} and transition.run_values["has_work"] is True


# --- the scheduler's pass over every run status ----------------------------------------------------

PASS = workflow("pass", tool("lost"), tool("ready"), tool("due"))
EVERY_PASS_MOVE = {"lost": S.RETRYING, "due": S.QUEUED, "ready": S.QUEUED}
# run status -> (the run's move, the events about the run, the steps' moves)
PASS_BY_RUN_STATUS = {
    R.QUEUED: (R.RUNNING, [EventType.RUN_STARTED], EVERY_PASS_MOVE),
    R.RUNNING: (None, [], EVERY_PASS_MOVE),
    R.WAITING: (R.RUNNING, [EventType.RUN_RESUMED], EVERY_PASS_MOVE),
    R.PAUSED: (None, [], {"lost": S.RETRYING}),  # a paused run only reclaims the attempts of lost workers
    # An ended run only stops the attempts of lost workers (a graceful cancel let them run on).
    R.SUCCEEDED: (None, [], {"lost": S.CANCELLED}),
    R.FAILED: (None, [], {"lost": S.CANCELLED}),
    R.CANCELLED: (None, [], {"lost": S.CANCELLED}),
}
RUN_EVENTS = {EventType.RUN_STARTED, EventType.RUN_RESUMED, EventType.RUN_RUNNING, EventType.RUN_WAITING}


@pytest.mark.parametrize("run_status", list(RunStatus))
def test_the_schedulers_pass_over_each_run_status(run_status):
    run_to, run_events, moves = PASS_BY_RUN_STATUS[run_status]
    state = run_state(PASS, run_status, {
        "lost": step_state(PASS, "lost", S.RUNNING, 1, lease_expired=True),
        "ready": step_state(PASS, "ready", S.PENDING, 0),
        "due": step_state(PASS, "due", S.RETRYING, 1, due=True),
    }, outputs={})
    transition = advance.on_advance(state, PASS, counting_env(), kept={})
    assert transition.run_to is run_to
    assert [e for e in event_types(transition) if e in RUN_EVENTS] == run_events
    assert moved_to(transition) == moves
    assert transition.run_values["has_work"] is False
    if run_status in TERMINAL_RUN:
        assert set(transition.run_values) == {"has_work"} and transition.revoke == [f"{state.id}.lost.1"]
        assert event_types(transition) == [EventType.STEP_CANCELLED]
    assert table_violations(transition) == []


def test_the_first_pass_starts_a_queued_run_and_queues_its_first_step():
    transition = advance.on_advance(run_state(CHAIN), CHAIN, counting_env())
    assert (transition.run_to, transition.run_values["started_at"]) == (R.RUNNING, NOW)
    move = transition.moves[0]
    assert (len(transition.moves), move.step_id, move.target, move.values["attempt"]) == (
        1, "a", S.QUEUED, NEXT_ATTEMPT)
    assert transition.messages == [StepMessage(RUN_ID, "a", 1, "default", 300)]
    assert transition.after.step("a").attempt == 1


# --- the scheduler's pass over every step status, due or not, lease expired or not ------------------

SUBJECT = workflow("subject", tool("subject"), tool("other"))


def expected_pass_move(step_status: StepStatus, due: bool, lease_expired: bool) -> StepStatus | None:
    """What a pass does to a `tool` step (its run running, with another step running)."""
    if step_status is S.PENDING:
        return S.QUEUED  # it needs nothing: it is ready
    if step_status is S.RUNNING and lease_expired:
        return S.RETRYING  # a lost worker's attempt, 1 of 3
    if step_status is S.RETRYING and due:
        return S.QUEUED
    return None  # a waiting `tool` step (an agent's question) has nothing to do when due


@pytest.mark.parametrize(("due", "lease_expired"), list(product([False, True], repeat=2)))
@pytest.mark.parametrize("step_status", list(StepStatus))
def test_the_schedulers_pass_over_each_step_status_and_flags(step_status, due, lease_expired):
    state = run_state(SUBJECT, R.RUNNING, {
        "subject": step_state(SUBJECT, "subject", step_status, 1, due=due, lease_expired=lease_expired),
        "other": step_state(SUBJECT, "other", S.RUNNING, 1),
    }, outputs={})
    transition = advance.on_advance(state, SUBJECT, counting_env(), kept={})
    expected = expected_pass_move(step_status, due, lease_expired)
    assert moved_to(transition) == ({"subject": expected} if expected else {})
    if expected is S.QUEUED:
        assert transition.messages[0].attempt == state.step("subject").attempt + 1
    assert transition.run_to is None and table_violations(transition) == []


WAITERS = workflow("waiters", {"id": "timer", "type": "timer", "duration_s": 5},
                   {"id": "event", "type": "wait_event", "correlation_key": "k", "timeout_s": 60},
                   {"id": "approval", "type": "approval"}, {"id": "question", "type": "question", "question": "?"},
                   tool("busy"))


@pytest.mark.parametrize("due", [False, True])
@pytest.mark.parametrize("waiter", ["timer", "event", "approval", "question"])
def test_a_due_time_passing_resolves_a_waiting_step_as_its_type_says(waiter, due):
    steps = {s.id: step_state(WAITERS, s.id, S.WAITING, 1, waiting_on=s.type) for s in WAITERS.steps}
    steps[waiter] = steps[waiter].moved(due=due)
    steps["busy"] = step_state(WAITERS, "busy", S.RUNNING, 1)
    transition = advance.on_advance(run_state(WAITERS, R.RUNNING, steps, outputs={}), WAITERS, counting_env(),
                                    kept={})
    assert table_violations(transition) == []
    if not due or waiter in ("approval", "question"):
        assert transition.moves == () and transition.run_to is None
    elif waiter == "timer":
        assert moved_to(transition) == {"timer": S.SUCCEEDED}
        assert the_move(transition, "timer").values["output"] == {"fired": True}
    else:  # an event that never came fails its step for good, and its run fast
        assert the_move(transition, "event").values["error"]["code"] == ErrorCode.EVENT_TIMEOUT.value
        assert moved_to(transition) == {"event": S.FAILED, "timer": S.CANCELLED, "approval": S.CANCELLED,
                                        "question": S.CANCELLED, "busy": S.CANCELLED}
        assert transition.run_to is R.FAILED and transition.revoke == [task_id(RUN_ID, "busy", 1)]


def test_a_lost_workers_last_attempt_fails_the_step_and_its_run():
    state = run_state(SUBJECT, R.RUNNING, {
        "subject": step_state(SUBJECT, "subject", S.RUNNING, 3, lease_expired=True),
        "other": step_state(SUBJECT, "other", S.RUNNING, 1),
    }, outputs={})
    transition = advance.on_advance(state, SUBJECT, counting_env(), kept={})
    assert moved_to(transition) == {"subject": S.FAILED, "other": S.CANCELLED}
    assert the_move(transition, "subject").values["error"]["code"] == ErrorCode.WORKER_LOST.value
    assert transition.run_to is R.FAILED and table_violations(transition) == []


# --- Draft's moves over every pair of statuses -----------------------------------------------------

STEP_PAIRS = list(product(StepStatus, repeat=2))
ALLOWED_STEP_PAIRS = [(s, t) for s, t in STEP_PAIRS if t in STEP_TRANSITIONS[s]]
REFUSED_STEP_PAIRS = [(s, t) for s, t in STEP_PAIRS if t not in STEP_TRANSITIONS[s]]


def draft_on(step_status: StepStatus) -> Draft:
    return Draft(run_state(FLAT, R.RUNNING, {"subject": step_state(FLAT, "subject", step_status, 2)}))


@pytest.mark.parametrize(("source", "target"), STEP_PAIRS)
def test_draft_moves_a_step_exactly_where_the_table_allows(source, target):
    draft = draft_on(source)
    allowed = target in STEP_TRANSITIONS[source]
    assert draft.move(draft.step("subject"), target) is allowed
    assert [(m.step_id, m.target) for m in draft.moves] == ([("subject", target)] if allowed else [])
    assert draft.step("subject").status is (target if allowed else source)


@pytest.mark.parametrize(("source", "target"), ALLOWED_STEP_PAIRS)
def test_a_reported_move_the_table_allows_is_guarded_on_status_and_attempt(source, target):
    draft = draft_on(source)
    assert draft.move(draft.step("subject"), target, reported=True)
    (move,) = draft.moves
    assert source in move.from_ and move.attempt == 2
    assert move.from_ == states.step_allowed_from(target)


@pytest.mark.parametrize(("source", "target"), REFUSED_STEP_PAIRS)
def test_a_reported_move_the_table_refuses_is_an_invalid_transition(source, target):
    draft = draft_on(source)
    with pytest.raises(InvalidTransition):
        draft.move(draft.step("subject"), target, reported=True)
    assert draft.moves == [] and draft.step("subject").status is source


@pytest.mark.parametrize(("source", "target"), list(product(RunStatus, repeat=2)))
def test_draft_moves_the_run_exactly_where_the_table_allows(source, target):
    draft = Draft(run_state(FLAT, source))
    if target is source:
        draft.move_run(target)
        assert draft.run_to is None
    elif target in RUN_TRANSITIONS[source]:
        draft.move_run(target)
        assert draft.run_to is target and draft.finish().after.status is target
    else:
        with pytest.raises(InvalidTransition):
            draft.move_run(target)
        assert draft.run_to is None
