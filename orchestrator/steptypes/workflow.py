"""`workflow` steps: a sub-run. The step starts a child run of another workflow (or of its own, within
the depth limit) when it starts, holds no worker while the child is live, and takes the child's output
as its own, or fails with ``child_run_failed`` when the child fails (core.children). With ``for_each``
it is a map over child runs: one child per item, ``item`` and ``index`` in its ``input`` (core.items)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from orchestrator.steptypes.base import StepType
from orchestrator.steptypes.fields import StepFields


class WorkflowStep(StepFields):
    type: Literal["workflow"]
    workflow_id: str = Field(min_length=1, max_length=100)
    version: int | None = Field(default=None, ge=1)  # None: the child workflow's latest version
    input: dict[str, Any] = {}  # templated, as a step's args are: the child run's input


class SubWorkflow(StepType):
    name = "workflow"
    definition = WorkflowStep
    label = "Sub-workflow"
    # Not parked as a waiting type is: the scheduler starts its child run (core.children).
    waits_on = "child_run"


STEP_TYPE = SubWorkflow()
