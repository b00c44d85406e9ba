"""A new run, decided: the scheduler's first pass over it, taken in the transaction that creates it
when that pass is plain (it only queues worker steps), so the first steps need no doorbell and no
scheduler pass before a worker takes them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.core import advance
from orchestrator.core.inputs import Env
from orchestrator.core.reports import empty_usage
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import Transition
from orchestrator.definitions import Definition
from orchestrator.states import RunStatus, StepStatus


def new_run(*, run_id: str, tenant_id: str, workflow_id: str, version: int, run_input: Any,
            steps: Iterable[StepState], reused: Mapping[str, Any] | None = None) -> RunState:
    """A run as its creation leaves it: queued, its steps pending, its log holding `run_created`.

    ``reused`` (a fork, core.fork.plan): the outputs of the steps it keeps from the original run, which
    ``steps`` holds as succeeded; the templates and conditions of the steps that run read them."""
    return RunState(id=run_id, tenant_id=tenant_id, workflow_id=workflow_id, workflow_version=version,
                    status=RunStatus.QUEUED, last_seq=1, steps=MappingProxyType({s.step_id: s for s in steps}),
                    usage=empty_usage(), input=run_input, outputs=dict(reused or {}), approval=None)


def on_start(state: RunState, definition: Definition, env: Env) -> Transition | None:
    """The first pass over ``state`` (see new_run) if it only starts the run and queues worker steps;
    None if it does more (a first step waits in the database, or fails at once), which the
    scheduler's pass then does."""
    try:
        transition = advance.on_advance(state, definition, env, kept={})
    except advance.NeedsFacts:
        return None
    if transition.requests or transition.close_requests or transition.output_from:
        return None
    if any(m.target is not StepStatus.QUEUED for m in transition.moves):
        return None
    return transition
