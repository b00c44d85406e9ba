"""Sub-runs: a `workflow` step starts a child run and takes its result, decided.

The step holds no worker: when it starts (or a retry's backoff passed) it moves to `running` and the
transition asks for a child run (``ChildStart``), which the scheduler creates in the same transaction
(``parent_run_id``, ``parent_step_id``, the parent's depth + 1), its input rendered there from the
step's templates (with ``item`` and ``index`` for an item of a map over child runs, core.items). The
step's row names its child; a child that ends wakes its parent (``Transition.wake_run``) and makes
that step due, so the parent's next pass reads only the children of its due sub-run steps
(``RunState.children``) and settles them: the child's output, or ``child_run_failed`` (retryable: a
retry starts a new child). A step stopped while its child is live (cancelled, fail-fast, k-of-n)
asks for the child to be cancelled (``Transition.stop_children``). A child another transaction held
at that moment is not waited for: the scheduler makes its stopped step (or item) due, and the next
pass over the parent asks again (``stop_held``), until the child is reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core.inputs import Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import StepState
from orchestrator.core.transition import NOW, Draft
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.definitions import Definition
from orchestrator.states import TERMINAL_RUN, TERMINAL_STEP, RunStatus, StepStatus

SUB_RUN = "workflow"  # the step type


@dataclass(frozen=True)
class ChildStart:
    """A child run to create for a sub-run step's (or a for-each item's) attempt; its input is the
    step's ``input`` rendered when it is created."""

    step_id: str
    attempt: int
    workflow_id: str
    version: int | None


@dataclass(frozen=True)
class ChildFacts:
    """A step's child run, as the parent's pass reads it."""

    run_id: str
    status: RunStatus
    output: Any = None
    error: Mapping[str, Any] | None = None


def too_deep(depth: int, env: Env) -> Outcome | None:
    """The outcome that fails a step whose child run would be deeper than the limit; None if it is not."""
    if depth + 1 <= env.max_depth:
        return None
    return Outcome(error=ErrorInfo(ErrorCode.MAX_DEPTH_EXCEEDED.value, (
        f"a child run here would be {depth + 1} levels deep; at most {env.max_depth} are allowed "
        "(SWITCHYARD_MAX_RUN_DEPTH): look for a workflow that calls itself without end"), False))


def start(draft: Draft, definition: Definition, step: StepState, env: Env) -> Outcome | None:
    """Start the sub-run step or item (pending, or retrying whose backoff passed): `running`, with its
    child run asked for. Returns the outcome that fails it at once (too deep)."""
    step_def = definition.step(step.step_id)
    attempt = step.attempt + 1
    draft.move(step, StepStatus.RUNNING, only_from=[step.status], attempt=attempt, queued_at=NOW, started_at=NOW,
               completed_at=None, error=None, output=None, due_at=None, checkpoint=None)
    draft.event(EventType.STEP_STARTED, step.step_id, attempt, workflow_id=step_def.workflow_id)
    refused = too_deep(draft.run.depth, env)
    if refused is None:
        draft.children.append(ChildStart(step.step_id, attempt, step_def.workflow_id, step_def.version))
    return refused


def woken(draft: Draft) -> list[StepState]:
    """The sub-run steps and items whose child ended since (made due by its end), in the run's order."""
    return [s for s in draft.steps.values()
            if s.type == SUB_RUN and s.status is StepStatus.RUNNING and s.due and s.item_counts is None]


def ended(facts: ChildFacts | None) -> Outcome | None:
    """What the step's child coming to an end does to it; None while the child is live (or not found)."""
    if facts is None or facts.status not in TERMINAL_RUN:
        return None
    if facts.status is RunStatus.SUCCEEDED:
        return Outcome(output=facts.output)
    reason = (facts.error or {}).get("message") or facts.status.value
    return Outcome(error=ErrorInfo(ErrorCode.CHILD_RUN_FAILED.value, f"child run {facts.run_id} "
                                   f"{facts.status.value}: {reason}", True, {"child_run_id": facts.run_id}))


def stop(draft: Draft, step_ids: list[str]) -> None:
    """The live children of the sub-run steps or items ``step_ids`` (a step's: its items' too) are to be
    cancelled."""
    for step_id in step_ids:
        if draft.step(step_id).type == SUB_RUN and step_id not in draft.stop_children:
            draft.stop_children.append(step_id)


def stop_held(draft: Draft) -> None:
    """The stopped sub-run steps and items made due because their live child was held by another
    transaction when they stopped (orchestrator/sub_runs.py): their children are asked for again."""
    for step in list(draft.steps.values()):
        if step.type == SUB_RUN and step.due and step.status in TERMINAL_STEP:
            draft.update(step, due_at=None)
            stop(draft, [step.step_id])
