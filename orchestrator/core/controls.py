"""Operators' actions on a run, decided: pause, resume, cancel, retry, rerun's note on the old run,
and a message deferred because its run is paused."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.core import items, stopping
from orchestrator.core.inputs import Control, Defer
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import NOW, Draft, Transition
from orchestrator.core.vocabulary import ErrorCode, EventType, SkipReason, WaitsOn
from orchestrator.definitions import Definition
from orchestrator.states import RunStatus, StepStatus

# Immediate stops everything in flight; graceful lets running attempts finish and be recorded.
CANCEL_STOPS = {
    "immediate": frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING}),
    "graceful": frozenset({StepStatus.QUEUED, StepStatus.RETRYING, StepStatus.WAITING}),
}
# What `retry` starts over: the steps that did not succeed.
RETRIED_STEPS = frozenset({StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED})


def on_control(state: RunState, definition: Definition, control: Control) -> Transition:
    """The transition of ``control`` (its action already allowed from the run's status: see
    states.apply_control); ``rerun`` only notes the new run (``options["new_run_id"]``) on this one."""
    draft = Draft(state)
    audit = control.actor.audit()
    options = control.options
    if control.action == "pause":
        draft.move_run(RunStatus.PAUSED)
        draft.event(EventType.RUN_PAUSED, **audit)
    elif control.action == "resume":
        _resume(draft, options.get("limits"), audit)
    elif control.action == "cancel":
        _cancel(draft, options.get("mode", "immediate"), options.get("reason"), audit)
    elif control.action == "retry":
        _retry(draft, definition, audit)
    elif control.action == "rerun":
        draft.event(EventType.RUN_RERUN, new_run_id=options["new_run_id"], **audit)
    else:
        raise ValueError(f"unknown control {control.action!r}")
    return draft.finish()


def _resume(draft: Draft, raised: dict | None, audit: dict) -> None:
    """Back to running (the scheduler's next pass decides whether it really waits), with raised limits
    if given; steps that stopped at the budget are dispatched again and go on from their checkpoints."""
    draft.move_run(RunStatus.RUNNING)
    draft.run_values["has_work"] = True
    if raised is not None:
        draft.run_values["limits"] = {**(draft.run.limits or {}), **raised}
    for step in list(draft.steps.values()):
        if step.waiting_on == WaitsOn.BUDGET:
            draft.move(step, StepStatus.PENDING, only_from=[StepStatus.WAITING], waiting_on=None)
    draft.event(EventType.RUN_RESUMED, limits=draft.run_values.get("limits"), **audit)


def _cancel(draft: Draft, mode: str, reason: str | None, audit: dict) -> None:
    message = reason or "the run was cancelled"
    steps = draft.steps.values()
    stopping.stop_steps(draft, cancel=[s.step_id for s in steps if s.status in CANCEL_STOPS[mode]],
                        skip=[s.step_id for s in steps if s.status is StepStatus.PENDING], message=message,
                        skip_reason=SkipReason.RUN_CANCELLED)
    draft.move_run(RunStatus.CANCELLED)
    draft.run_values.update(completed_at=NOW, waiting_on=None,
                            error={"code": ErrorCode.CANCELLED.value, "message": message, "step_id": None})
    draft.event(EventType.RUN_CANCELLED, mode=mode, reason=reason, **audit)


def _retry(draft: Draft, definition: Definition, audit: dict) -> None:
    """The same run goes on from where it failed: failed, cancelled and skipped steps start over."""
    again = [s.step_id for s in draft.steps.values() if s.status in RETRIED_STEPS]
    reopen(draft, definition, again)
    draft.move_run(RunStatus.QUEUED)
    attempt = draft.run.attempt + 1
    draft.run_values.update(attempt=attempt, error=None, completed_at=None, has_work=True, waiting_on=None)
    draft.event(EventType.RUN_RETRIED, attempt=attempt, steps=again, **audit)


def reopen(draft: Draft, definition: Definition, step_ids: Iterable[str]) -> list[str]:
    """Put finished or waiting steps back to `pending` to run again, each with a fresh retry budget;
    the ids reopened, in the run's order.

    Attempt numbers keep counting, so a new attempt never reuses an old Celery task id (which a
    worker may still hold as revoked).
    """
    wanted, reopened = set(step_ids), []
    for step in list(draft.steps.values()):
        if step.step_id not in wanted:
            continue
        budget = definition.retry_policy(definition.step(step.step_id)).max_attempts
        # A for-each step that failed keeps its items' counts: started again, it keeps the items that
        # succeeded (core.items.expand); one that succeeded (changes requested) runs every item again.
        forget = {"item_counts": None} if step.status is StepStatus.SUCCEEDED and step.item_counts else {}
        if draft.move(step, StepStatus.PENDING, max_attempts=step.attempt + budget, error=None, output=None,
                      skipped_reason=None, cancel_requested=False, worker=None, queued_at=None, started_at=None,
                      completed_at=None, due_at=None, lease_expires_at=None, checkpoint=None, correlation_key=None,
                      waiting_on=None, **forget):
            reopened.append(step.step_id)
    return reopened


def on_defer(state: RunState, defer: Defer) -> Transition | None:
    """A message that arrived while its run is paused puts its step back to `pending` (the attempt is
    not spent), so resume dispatches it again; None if there is nothing to defer."""
    step = state.steps.get(defer.step_id)
    if (state.status is not RunStatus.PAUSED or step is None or step.status is not StepStatus.QUEUED
            or step.attempt != defer.attempt):
        return None
    draft = Draft(state)
    draft.move(step, StepStatus.PENDING, only_from=[StepStatus.QUEUED], reported=True, attempt=defer.attempt - 1,
               queued_at=None)
    draft.event(EventType.STEP_DEFERRED, step.step_id, defer.attempt, reason="run_paused")
    if items.parent_of(step.step_id) is not None:
        items.put_back(draft, step)
    return draft.finish()
