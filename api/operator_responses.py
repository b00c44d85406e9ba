"""The answers of the operators' tools over runs (POST /runs/bulk/{action}, GET /runs/{run_id}/compare/
{other_id}), for the OpenAPI document, kept exact as api/responses.py keeps the others."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.responses import ForkedFrom
from orchestrator.states import RunStatus, StepStatus


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")  # exact, as api/responses.py's answers are


class BulkSkip(_Out):
    run_id: str
    reason: str


class BulkResult(_Out):
    """POST /runs/bulk/{action}: ``matched`` counts every run the filter selects; at most ``limit`` of them
    (newest first) are acted on; ``runs`` are those the action applied to (for rerun and fork, the new
    runs; on a dry run, the runs it would apply to); ``skipped`` the others, with why."""

    matched: int
    applied: int
    skipped: list[BulkSkip]
    runs: list[str]


class ComparedStepRun(_Out):
    """One step in one of the two runs compared."""

    status: StepStatus
    attempts: int
    duration_s: float | None
    tokens_in: float
    tokens_out: float
    credits: float
    reused: bool


class ComparedStep(_Out):
    step_id: str
    input_changed: bool = Field(description="Its fields in the run's definition, the outputs of the steps it "
                                            "needs, or the run input its templates read differ.")
    output_changed: bool
    output_diff: list[dict[str, Any]] = Field(description="JSON Patch (RFC 6902) from the run's output to the "
                                                          "other's.")
    run: ComparedStepRun | None = Field(description="Null if the run has no such step.")
    other: ComparedStepRun | None


class ComparedRun(_Out):
    id: str
    workflow_id: str
    version: int
    status: RunStatus
    usage: dict[str, Any]
    forked_from: ForkedFrom | None


class Comparison(_Out):
    """GET /runs/{run_id}/compare/{other_id}: the steps in graph order."""

    run: ComparedRun
    other: ComparedRun
    first_divergence: str | None = Field(description="The first step, in graph order, whose input or output "
                                                     "differs (or that one run lacks); null if none.")
    steps: list[ComparedStep]
