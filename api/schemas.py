"""Request bodies as pydantic models: the views validate with them and the OpenAPI document is
generated from them, so the two cannot disagree."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.definitions import Definition
from orchestrator.policy import Limits, Policy
from orchestrator.schedules import ScheduleBody


class _Body(BaseModel):
    # strict: JSON "1" is not a number and 1 is not a string; forbid: an unknown field is a 400.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StartRun(_Body):
    """POST /runs."""

    workflow_id: str = Field(min_length=1, max_length=100)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    input: Any = Field(default_factory=dict, description="Checked against the workflow's input_schema.")
    priority: int | None = Field(default=None, ge=1, le=9,
                                 description="1 (first) to 9; default the workflow's priority, else 5.")


class ControlBody(_Body):
    """POST /runs/{run_id}/{action}: cancel takes `reason` and `mode`, resume takes `limits` (raised
    budgets for this run); the others take none."""

    reason: str | None = Field(default=None, max_length=2000)
    mode: Literal["immediate", "graceful"] = "immediate"
    limits: Limits | None = None


class Decision(_Body):
    """POST /runs/{run_id}/approvals/{approval_id}/{decision}."""

    comment: str | None = Field(default=None, max_length=10000)


class Answer(_Body):
    """POST /runs/{run_id}/questions/{question_id}/answer."""

    answer: Any


class InboundEvent(_Body):
    """POST /events: starts the workflows its ``name`` triggers, and reaches the wait_event steps waiting
    on its ``correlation_key``; at least one of the two."""

    correlation_key: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    payload: Any = None
    id: str | None = Field(default=None, min_length=1, max_length=200,
                           description="The sender's id of the event: the same id again starts and delivers nothing.")


class TokenCreate(_Body):
    """POST /tokens: a token of the caller's tenant."""

    role: Literal["viewer", "operator", "admin"]
    name: str = Field(default="", max_length=200)


class WebhookSecretCreate(_Body):
    """POST /workflows/{workflow_id}/webhook-secrets."""

    overlap_s: float | None = Field(
        default=None, ge=0, le=7 * 86400,
        description="How long the secrets in use stay valid beside the new one (default: the server's setting).",
    )


StepOverrides = dict[str, dict[str, Any]]
RunStatusName = Literal["queued", "running", "waiting", "paused", "succeeded", "failed", "cancelled"]


class ForkBody(_Body):
    """POST /runs/{run_id}/fork: a new run from ``from_step`` of a run that ended."""

    from_step: str = Field(min_length=1, max_length=64, description="This step and every step after it run anew; "
                           "the steps that do not depend on it and succeeded keep their recorded output.")
    input: Any = Field(default=None, description="The fork's whole input (default: the original's). Not with "
                                                 "`input_patch`.")
    input_patch: dict[str, Any] | None = Field(default=None, description="A JSON merge patch (RFC 7396) of the "
                                                                       "original's input.")
    steps: StepOverrides | None = Field(default=None, description="Overrides of step fields, by step id: "
                                        "{\"summarise\": {\"prompt\": \"...\", \"model\": \"...\"}}. Only steps the "
                                        "fork runs anew may be overridden.")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="The workflow version to run "
                                                                          "(default: the original's).")


class RunFilterBody(_Body):
    """Which runs a bulk action selects; at least one criterion, and every one given must hold."""

    status: RunStatusName | list[RunStatusName] | None = None
    workflow_id: str | None = Field(default=None, min_length=1, max_length=100)
    error_code: str | None = Field(default=None, min_length=1, max_length=100,
                                   description="The run's error.code, e.g. step_failed.")
    created_after: datetime | None = Field(default=None, strict=False, description="RFC 3339.")
    created_before: datetime | None = Field(default=None, strict=False, description="RFC 3339.")
    run_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)


class BulkBody(_Body):
    """POST /runs/bulk/{action}: the filter, a dry run, a limit, and the action's own fields (cancel:
    reason, mode; resume: limits; fork: from_step, input, input_patch, steps, version)."""

    filter: RunFilterBody
    dry_run: bool = Field(default=False, description="Select and check the runs; change nothing.")
    limit: int = Field(default=100, ge=1, le=1000, description="At most this many runs are acted on, newest first.")
    reason: str | None = Field(default=None, max_length=2000)
    mode: Literal["immediate", "graceful"] | None = None
    limits: Limits | None = None
    from_step: str | None = Field(default=None, min_length=1, max_length=64)
    input: Any = None
    input_patch: dict[str, Any] | None = None
    steps: StepOverrides | None = None
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "ScheduleBody": ScheduleBody,
    "StartRun": StartRun, "ControlBody": ControlBody, "Decision": Decision, "Answer": Answer,
    "InboundEvent": InboundEvent, "TokenCreate": TokenCreate, "WebhookSecretCreate": WebhookSecretCreate,
    "Definition": Definition, "Policy": Policy, "ForkBody": ForkBody, "BulkBody": BulkBody,
}
