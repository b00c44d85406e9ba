"""Building blocks of the pure core's tests (orchestrator/core): definitions, snapshots of runs built
from them, an Env that draws nothing at random, the outcomes a worker reports, and the check that a
transition only makes moves the transition tables allow."""

from __future__ import annotations

from itertools import count
from typing import Any

from orchestrator.core.inputs import Env
from orchestrator.core.reports import ErrorInfo, Outcome, Suspension
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import ErrorCode
from orchestrator.definitions import Definition, parse_definition
from orchestrator.states import RUN_TRANSITIONS, STEP_TRANSITIONS, RunStatus, StepStatus

RUN_ID = "run_core"
DEFAULT_QUEUE = "default"


def tool(step_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    """A `tool` step (the always-known `echo` tool) that needs ``needs``."""
    return {"id": step_id, "type": "tool", "tool": "echo", "needs": list(needs), **fields}


def workflow(name: str, *steps: dict[str, Any]) -> Definition:
    """A definition parsed through the same gate a published one passes."""
    return parse_definition({"name": name, "steps": list(steps)})


def counting_env() -> Env:
    """An Env whose jitter is always the middle (rand() == 0.5) and whose ids count up: apr_1, q_2, …"""
    counter = count(1)
    return Env(rand=lambda: 0.5, new_id=lambda prefix: f"{prefix}_{next(counter)}")


def step_state(definition: Definition, step_id: str, status: StepStatus = StepStatus.PENDING, attempt: int = 0,
               **fields: Any) -> StepState:
    """The step ``step_id`` of ``definition`` at ``status`` and ``attempt``, with its budget of attempts."""
    step = definition.step(step_id)
    return StepState(step_id=step_id, type=step.type, status=status, attempt=attempt,
                     max_attempts=definition.retry_policy(step).max_attempts, queue=step.queue or DEFAULT_QUEUE,
                     **fields)


def run_state(definition: Definition, status: RunStatus = RunStatus.QUEUED, steps: dict[str, StepState] | None = None,
              **facts: Any) -> RunState:
    """A complete, locked snapshot of a run of ``definition``: every step pending at attempt 0 except
    those given in ``steps``."""
    every = {s.id: step_state(definition, s.id) for s in definition.steps}
    every.update(steps or {})
    return RunState(id=RUN_ID, tenant_id="tenant_core", workflow_id="wf_core", workflow_version=1, status=status,
                    last_seq=0, steps=every, **facts)


SUCCESS = Outcome(output={"ok": True})
RETRYABLE_ERROR = Outcome(error=ErrorInfo(ErrorCode.STEP_ERROR.value, "the tool timed out", True))
PERMANENT_ERROR = Outcome(error=ErrorInfo(ErrorCode.STEP_ERROR.value, "the tool refused its input", False))
STOPPED = Outcome(error=ErrorInfo(ErrorCode.RUN_STOPPED.value, "the run stopped", False))
APPROVAL_CALL = {"tool": "echo", "args": {"text": "hi"}}


def suspended(kind: str) -> Outcome:
    """An attempt that gave its worker back to wait on ``kind`` (question, approval or budget)."""
    call = APPROVAL_CALL if kind == "approval" else None
    return Outcome(suspend=Suspension(kind, f"waiting on {kind}", {"turn": 2}, call=call))


def table_violations(transition: Transition) -> list[str]:
    """The moves of ``transition`` that the transition tables refuse, each from the status its step
    has when the move is made (the snapshot's, or the one an earlier move of the same transition left),
    and whose guard does not hold that status; and the run's move if the table refuses it."""
    problems = []
    current = {step_id: step.status for step_id, step in transition.run.steps.items()}
    for move in transition.moves:
        source = current[move.step_id]
        if move.target is source and move.from_ == {source}:
            continue  # values written in place (Draft.update), not a move
        if move.target not in STEP_TRANSITIONS[source]:
            problems.append(f"step {move.step_id}: {source} -> {move.target} is not in STEP_TRANSITIONS")
        if source not in move.from_:
            problems.append(f"step {move.step_id}: the guard {sorted(move.from_)} misses its status {source}")
        current[move.step_id] = move.target
    if transition.run_to is not None and transition.run_to not in RUN_TRANSITIONS[transition.run.status]:
        problems.append(f"run: {transition.run.status} -> {transition.run_to} is not in RUN_TRANSITIONS")
    return problems
