"""Stopping a run: fail-fast after a step failed for good, and an operator's cancel share one rule —
steps in flight are cancelled (their tasks revoked), steps never started are skipped, open requests close."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import dag
from orchestrator.core import children, items
from orchestrator.core.transition import NOW, Draft
from orchestrator.core.vocabulary import ErrorCode, EventType, SkipReason
from orchestrator.states import RunStatus, StepStatus


def stopped_error(message: str) -> dict[str, Any]:
    """The error a step stopped by its run's end carries."""
    return {"code": ErrorCode.RUN_STOPPED.value, "message": message, "retryable": False}


def stop_steps(draft: Draft, *, cancel: Sequence[str], skip: Sequence[str], message: str,
               skip_reason: SkipReason) -> None:
    """Cancel the steps ``cancel`` (in flight) and skip the steps ``skip`` (never started); their
    pending approvals and open questions close, and the live child runs of sub-run steps are cancelled."""
    stopped = stopped_error(message)
    items.stop(draft, cancel, stopped)
    children.stop(draft, list(cancel))
    for step_id in cancel:
        step = draft.step(step_id)
        if draft.move(step, StepStatus.CANCELLED, cancel_requested=True, error=stopped, completed_at=NOW,
                      lease_expires_at=None, due_at=None):
            draft.event(EventType.STEP_CANCELLED, step_id, step.attempt, reason=ErrorCode.RUN_STOPPED.value)
    for step_id in skip:
        if draft.move(draft.step(step_id), StepStatus.SKIPPED, skipped_reason=skip_reason.value, completed_at=NOW):
            draft.event(EventType.STEP_COMPLETED, step_id, None, skipped=True, reason=skip_reason.value)
    draft.close_requests = True


def fail_run(draft: Draft, failed_step: str, error: Mapping[str, Any]) -> None:
    """Fail-fast (dag.fail_fast): the run fails at ``failed_step``; the other steps in flight are
    cancelled and those never started are skipped (blocked). Needs a snapshot of every step."""
    assert draft.run.complete, "fail-fast needs every step of the run"
    plan = dag.fail_fast(failed_step, draft.statuses())
    stop_steps(draft, cancel=plan.cancel, skip=plan.skip, message=f"run failed at step {failed_step!r}",
               skip_reason=SkipReason.BLOCKED)
    draft.move_run(RunStatus.FAILED)
    # The step's error, naming the step (its details too: an invalid_arguments' field, a child run's id).
    failed = {"code": error["code"], "message": error["message"], "step_id": failed_step}
    draft.run_values.update(error=failed | ({"details": error["details"]} if error.get("details") else {}),
                            completed_at=NOW, waiting_on=None)
    draft.event(EventType.RUN_FAILED, failed_step, None, error={"code": error["code"], "message": error["message"]})


def succeed_run(draft: Draft, outputs: Mapping[str, Any] | None = None, *, output_from: tuple[str, ...] = ()) -> None:
    """The run succeeded (every step did); its output is ``outputs``, or the outputs of ``output_from``
    read when the transition is written."""
    draft.move_run(RunStatus.SUCCEEDED)
    draft.run_values.update(completed_at=NOW, waiting_on=None, has_work=False)
    if outputs is not None:
        draft.run_values["output"] = dict(outputs)
    draft.output_from = output_from
    draft.event(EventType.RUN_SUCCEEDED)
