"""Request bodies as pydantic models: the views validate with them and the OpenAPI document is
generated from them, so the two cannot disagree."""

from __future__ import annotations

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


REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "ScheduleBody": ScheduleBody,
    "StartRun": StartRun, "ControlBody": ControlBody, "Decision": Decision, "Answer": Answer,
    "InboundEvent": InboundEvent, "TokenCreate": TokenCreate, "WebhookSecretCreate": WebhookSecretCreate,
    "Definition": Definition, "Policy": Policy,
}
