"""Sub-runs: a `workflow` step starts a child run and takes its result, decided.

The step holds no worker: when it starts (or a retry's backoff passed) it moves to `running` and the
transition asks for a child run (``ChildStart``), which the scheduler creates in the same transaction
(``parent_run_id``, ``parent_step_id``, the parent's depth + 1). A child that ends wakes its parent
(``Transition.wake_run``); the parent's pass reads its children (``RunState.children``) and settles
the step: the child's output, or ``child_run_failed`` (retryable: a retry starts a new child).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import templates
from orchestrator.core.inputs import Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import StepState
from orchestrator.core.transition import NOW, Draft
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.definitions import Definition
from orchestrator.errors import StepError
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

SUB_RUN = "workflow"  # the step type


@dataclass(frozen=True)
class ChildStart:
    """A child run to create for the step's attempt."""

    step_id: str
    attempt: int
    workflow_id: str
    version: int | None
    input: Any


@dataclass(frozen=True)
class ChildFacts:
    """A step's newest child run, as the parent's pass reads it."""

    run_id: str
    status: RunStatus
    output: Any = None
    error: Mapping[str, Any] | None = None


def start(draft: Draft, definition: Definition, step: StepState, context: dict[str, Any], env: Env) -> Outcome | None:
    """Start the sub-run step (pending, or retrying whose backoff passed): `running`, with its child run
    asked for. Returns the outcome that fails it at once (too deep, its input's templates failed)."""
    step_def = definition.step(step.step_id)
    attempt = step.attempt + 1
    draft.move(step, StepStatus.RUNNING, only_from=[step.status], attempt=attempt, queued_at=NOW, started_at=NOW,
               completed_at=None, error=None, output=None, due_at=None)
    draft.event(EventType.STEP_STARTED, step.step_id, attempt, workflow_id=step_def.workflow_id)
    if draft.run.depth + 1 > env.max_depth:
        return Outcome(error=ErrorInfo(ErrorCode.MAX_DEPTH_EXCEEDED.value, (
            f"a child run here would be {draft.run.depth + 1} levels deep; at most {env.max_depth} are allowed "
            "(SWITCHYARD_MAX_RUN_DEPTH): look for a workflow that calls itself without end"), False))
    try:
        child_input = templates.render(step_def.input, context)
    except StepError as exc:
        return Outcome(error=ErrorInfo.of(exc))
    draft.children.append(ChildStart(step.step_id, attempt, step_def.workflow_id, step_def.version, child_input))
    return None


def running(draft: Draft) -> list[StepState]:
    """The sub-run steps whose child is live (as far as the run knows)."""
    return [s for s in draft.steps.values() if s.type == SUB_RUN and s.status is StepStatus.RUNNING]


def ended(facts: ChildFacts | None) -> Outcome | None:
    """What the step's child coming to an end does to it; None while the child is live (or not read)."""
    if facts is None or facts.status not in TERMINAL_RUN:
        return None
    if facts.status is RunStatus.SUCCEEDED:
        return Outcome(output=facts.output)
    reason = (facts.error or {}).get("message") or facts.status.value
    return Outcome(error=ErrorInfo(ErrorCode.CHILD_RUN_FAILED.value, f"child run {facts.run_id} "
                                   f"{facts.status.value}: {reason}", True, {"child_run_id": facts.run_id}))
