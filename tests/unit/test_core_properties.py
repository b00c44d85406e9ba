"""Properties of the pure core (orchestrator/core) over random sequences of inputs: scheduler passes with
random due / lease flags, workers claiming and reporting attempts, operators' controls and people's
approval decisions, each applied to the run as the previous transition left it (``transition.after``).

After every input: every move is one the transition tables allow; a run that ended holds no step in
flight (but the attempts a graceful cancel let run); a run that failed holds no pending step; no step
succeeds twice without being reopened in between; a run that succeeded holds only settled steps, failed
ones only where `on_failure: continue` allows it (and only succeeded ones where no step has a condition
or may fail)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator import states
from orchestrator.core import advance, controls, outcome, people
from orchestrator.core.inputs import Actor, AttemptReport, Control, Defer
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import WaitsOn
from orchestrator.errors import InvalidTransitionError
from orchestrator.states import CONTROLS, TERMINAL_RUN, InvalidTransition, RunStatus, StepStatus
from tests.unit.core_fixtures import (
    APPROVAL_CALL,
    PERMANENT_ERROR,
    RETRYABLE_ERROR,
    RUN_ID,
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

DEFINITIONS = {
    "chain": workflow("chain", tool("a"), tool("b", "a"), tool("c", "b")),
    "fan_out_and_join": workflow("fan", tool("a"), tool("b", "a"), tool("c", "a"), tool("d", "b", "c")),
    "approval_and_timer": workflow(
        "gate", tool("draft"), {"id": "review", "type": "approval", "needs": ["draft"], "max_rounds": 2},
        {"id": "cool_off", "type": "timer", "duration_s": 30, "needs": ["review"]}, tool("publish", "cool_off"),
    ),
    "two_attempts": workflow("retries", tool("a", retry={"max_attempts": 2}),
                             tool("b", "a", retry={"max_attempts": 2})),
    # Control flow: a condition on a's output, a step that may fail, joins that wait for both branches.
    "control_flow": workflow(
        "flow", tool("a"), tool("b", "a", when="steps.a.output.ok"),
        tool("c", "a", on_failure="continue", retry={"max_attempts": 1}),
        tool("d", "b", "c", join="all_done"), tool("e", "b", "c", join="any_succeeded"),
    ),
}
MOST_STEPS = max(len(d.steps) for d in DEFINITIONS.values())
# What a worker reports of an attempt. A tool step also gives its worker back when a policy gates its
# call (approval) or its run went over budget.
REPORTS = {"success": SUCCESS, "retryable_error": RETRYABLE_ERROR, "permanent_error": PERMANENT_ERROR,
           "approval_gate": suspended(WaitsOn.APPROVAL.value), "over_budget": suspended(WaitsOn.BUDGET.value)}
SUSPENSIONS = ("approval_gate", "over_budget")
# Most attempts succeed, so that runs get to their end as well as to their failures.
REPORTED = st.sampled_from(["success"] * 5 + ["retryable_error", "permanent_error", *SUSPENSIONS])
# Most approvals are granted, so that runs get past them.
DECIDED = st.sampled_from(["approve", "approve", "reject", "request_changes"])
# control -> its action and options
CONTROL_INPUTS = {
    "pause": ("pause", {}),
    "resume": ("resume", {}),
    "cancel_immediate": ("cancel", {"mode": "immediate", "reason": "operator"}),
    "cancel_graceful": ("cancel", {"mode": "graceful", "reason": "operator"}),
    "retry": ("retry", {}),
    "rerun": ("rerun", {"new_run_id": "run_next"}),
}
IN_FLIGHT_IN_AN_ENDED_RUN = frozenset({S.QUEUED, S.RETRYING, S.WAITING})


class RunOfADefinition(RuleBasedStateMachine):
    """One run of one definition, moved on only by the pure core's decisions (and by the claim
    statement, queued -> running, which is the database's)."""

    # --- the model -------------------------------------------------------------------------------

    @initialize(name=st.sampled_from(sorted(DEFINITIONS)))
    def start(self, name: str) -> None:
        """A fresh queued run of the definition ``name``, every step pending."""
        self.definition = DEFINITIONS[name]
        self.env = counting_env()
        self.state: RunState = run_state(self.definition)
        self.outputs: dict[str, Any] = {}  # the outputs of the succeeded steps
        self.succeeded: set[str] = set()  # steps that succeeded and were not reopened since
        self.graceful_survivors: set[str] = set()  # running when a graceful cancel let them finish
        self.approval_rounds: dict[str, int] = {}  # step -> approvals opened for it (its latest round)

    def snapshot(self, flags: list[tuple[bool, bool]] | None = None, reported: str | None = None) -> RunState:
        """The run as the database holds it now, with the facts a decision reads: the clock checks
        (``flags``: (due, lease_expired) per step, where the step can have them), the outputs of the
        succeeded steps, and for a report whether every other step succeeded."""
        steps = []
        for index, step in enumerate(self.state.steps.values()):
            due, lease_expired = flags[index] if flags else (False, False)
            steps.append(step.moved(due=due and step.status in (S.RETRYING, S.WAITING),
                                    lease_expired=lease_expired and step.status is S.RUNNING))
        others_succeeded = None if reported is None else all(
            s.status is S.SUCCEEDED for s in self.state.steps.values() if s.step_id != reported)
        return self.state.with_steps(steps).replace(
            outputs={s: self.outputs[s] for s in self.succeeded}, approval=None, others_succeeded=others_succeeded)

    def steps_in(self, *statuses: StepStatus, type_: str | None = None) -> list[StepState]:
        return [s for s in self.state.steps.values() if s.status in statuses and type_ in (None, s.type)]

    def apply(self, transition: Transition | None) -> None:
        """Check ``transition`` and go on from the run it leaves (None: nothing changed)."""
        if transition is None:
            return
        assert transition.run is not None and transition.after is not None
        assert table_violations(transition) == []
        for move in transition.moves:
            self.graceful_survivors.discard(move.step_id)
            if move.target is S.SUCCEEDED:
                assert move.step_id not in self.succeeded, f"{move.step_id} succeeded twice without a reopen"
                self.succeeded.add(move.step_id)
                self.outputs[move.step_id] = move.values.get("output")
            elif move.target is S.PENDING:
                self.succeeded.discard(move.step_id)
        for request in transition.requests:
            if request.kind == "approval":
                self.approval_rounds[request.step_id] = self.approval_rounds.get(request.step_id, 0) + 1
        after = transition.after
        if transition.run_to is R.FAILED:
            assert not [s.step_id for s in after.steps.values() if s.status is S.PENDING]
        if transition.run_to is R.SUCCEEDED:
            sinks = self.definition.sinks
            assert transition.output_from == tuple(sinks) or transition.run_values["output"] == {
                s: self.outputs[s] if s in self.succeeded else None for s in sinks}
        # A reopened step's fresh budget is written with its move but missing from ``after`` (see
        # test_after_carries_the_budget_a_reopen_writes): the run goes on as the database holds it.
        budgets = {m.step_id: m.values["max_attempts"] for m in transition.moves if "max_attempts" in m.values}
        self.state = after.with_steps([after.step(s).moved(max_attempts=n) for s, n in budgets.items()])

    # --- the inputs ------------------------------------------------------------------------------

    @rule(flags=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=MOST_STEPS, max_size=MOST_STEPS))
    def scheduler_pass(self, flags: list[tuple[bool, bool]]) -> None:
        self.apply(advance.on_advance(self.snapshot(flags), self.definition, self.env, kept={}))

    @rule(pick=st.integers(0, MOST_STEPS))
    @precondition(lambda self: self.steps_in(S.QUEUED))
    def deliver_a_message(self, pick: int) -> None:
        """A worker takes a queued attempt's message: the claim statement moves it to running if the
        run is running or waiting; in a paused run the attempt is deferred."""
        queued = self.steps_in(S.QUEUED)
        step = queued[pick % len(queued)]
        if self.state.status in (R.RUNNING, R.WAITING):
            self.state = self.state.with_steps([step.moved(status=S.RUNNING)])
        elif self.state.status is R.PAUSED:
            self.apply(controls.on_defer(self.snapshot(), Defer(step.step_id, step.attempt)))

    @rule(pick=st.integers(0, MOST_STEPS), report=REPORTED, queue_ready=st.booleans())
    @precondition(lambda self: self.steps_in(S.RUNNING))
    def report_an_attempt(self, pick: int, report: str, queue_ready: bool) -> None:
        """A worker reports a running attempt; the same report delivered again is stale."""
        running = self.steps_in(S.RUNNING)
        step = running[pick % len(running)]
        report_ = AttemptReport(RUN_ID, step.step_id, step.attempt, REPORTS[report], queue_ready=queue_ready)
        transition = outcome.on_report(self.snapshot(reported=step.step_id), self.definition, report_, self.env)
        assert transition is not None, "a running step's report at its attempt is not stale"
        self.apply(transition)
        assert outcome.on_report(self.snapshot(reported=step.step_id), self.definition, report_, self.env) is None

    @rule(control=st.sampled_from(sorted(CONTROL_INPUTS)), acts_now=st.sampled_from([True, False, False, False]))
    def operator_control(self, control: str, acts_now: bool) -> None:
        """An operator's control, now and then (one input in four of this rule's), so that runs also
        get far before they are stopped."""
        if not acts_now:
            return
        action, options = CONTROL_INPUTS[control]
        status = self.state.status
        if status not in CONTROLS[action].allowed_from:
            with pytest.raises(InvalidTransition):
                states.apply_control(action, status)
            return
        target = states.apply_control(action, status)
        running = {s.step_id for s in self.steps_in(S.RUNNING)}
        transition = controls.on_control(self.snapshot(), self.definition, Control(action, ACTOR, options))
        assert transition.after.status is (target or status)
        self.apply(transition)
        if control == "cancel_graceful":
            self.graceful_survivors |= running

    def awaiting_approval(self) -> list[StepState]:
        """Approval steps waiting on their approval, and tool steps waiting on the approval of a call."""
        return [s for s in self.steps_in(S.WAITING) if s.type == "approval" or s.waiting_on == WaitsOn.APPROVAL]

    @rule(pick=st.integers(0, MOST_STEPS), decision=DECIDED)
    @precondition(lambda self: self.awaiting_approval())
    def decide_an_approval(self, pick: int, decision: str) -> None:
        waiting = self.awaiting_approval()
        step = waiting[pick % len(waiting)]
        state = self.snapshot()
        gated_call = APPROVAL_CALL if step.type != "approval" else None
        round_ = self.approval_rounds[step.step_id]
        request = people.ApprovalDecision(f"apr_{step.step_id}_{round_}", step.step_id, round_, "pending",
                                          gated_call, decision, None, ACTOR)
        try:
            people.check_approval(state, self.definition, request)
        except InvalidTransitionError:
            assert decision == "request_changes"
            assert gated_call or round_ >= self.definition.step(step.step_id).max_rounds
            return
        self.apply(people.on_approval(state, self.definition, request, self.env))

    # --- what holds after every input ----------------------------------------------------------

    @invariant()
    def an_ended_run_holds_no_step_in_flight_but_graceful_survivors(self) -> None:
        if self.state.status not in TERMINAL_RUN:
            return
        assert not self.steps_in(*IN_FLIGHT_IN_AN_ENDED_RUN)
        assert {s.step_id for s in self.steps_in(S.RUNNING)} <= self.graceful_survivors

    @invariant()
    def a_step_waits_on_the_budget_only_in_a_paused_run(self) -> None:
        if [s for s in self.steps_in(S.WAITING) if s.waiting_on == WaitsOn.BUDGET]:
            assert self.state.status is R.PAUSED

    @invariant()
    def a_succeeded_run_holds_only_settled_steps_and_fails_only_where_it_may(self) -> None:
        if self.state.status is R.SUCCEEDED:
            assert {s.status for s in self.state.steps.values()} <= {S.SUCCEEDED, S.SKIPPED, S.FAILED}
            for step in self.steps_in(S.FAILED):
                assert self.definition.step(step.step_id).on_failure == "continue", step
            if all(s.when is None and s.on_failure == "fail_run" for s in self.definition.steps):
                assert {s.status for s in self.state.steps.values()} == {S.SUCCEEDED}


def test_random_inputs_keep_the_core_within_its_tables_and_invariants():
    run_state_machine_as_test(RunOfADefinition, settings=settings(
        max_examples=200, stateful_step_count=100, deadline=None, database=None))


NO_FLAGS = [(False, False)] * MOST_STEPS


@pytest.mark.parametrize("suspension", SUSPENSIONS)
def test_an_attempt_suspending_after_a_graceful_cancel_leaves_no_step_waiting_in_the_ended_run(suspension):
    """The minimal example the property found: a chain starts, its first step is claimed, the run is
    cancelled gracefully, and the attempt still running suspends: it stops instead (nothing would
    resolve a wait in an ended run)."""
    run = RunOfADefinition()
    run.start("chain")
    run.scheduler_pass(NO_FLAGS)
    run.deliver_a_message(0)
    run.operator_control("cancel_graceful", acts_now=True)
    assert run.state.status is R.CANCELLED and run.graceful_survivors == {"a"}
    run.report_an_attempt(0, suspension, queue_ready=False)
    run.an_ended_run_holds_no_step_in_flight_but_graceful_survivors()


def test_after_carries_the_budget_a_reopen_writes():
    """``after`` is the run as the transition leaves it: the minimal example is a failed run retried,
    its failed step reopened with 3 more attempts."""
    chain = DEFINITIONS["chain"]
    failed = run_state(chain, R.FAILED, {"a": step_state(chain, "a", S.FAILED, 3),
                                         "b": step_state(chain, "b", S.SKIPPED), "c": step_state(chain, "c", S.SKIPPED)})
    transition = controls.on_control(failed, chain, Control("retry", ACTOR))
    written = next(m for m in transition.moves if m.step_id == "a").values["max_attempts"]
    assert written == 6
    assert transition.after.step("a").max_attempts == written
