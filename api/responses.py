"""The shapes the API answers, for the OpenAPI document (api/serializers.py builds them).

schemathesis checks every answer of the running app against these, so they are kept exact: every
field the serializers write is required here, and nullable where the serializer can write null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.states import RunStatus, StepStatus


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    code: str
    message: str
    details: dict[str, Any]


class Error(_Out):
    """Every error answer: ``{"error": {"code", "message", "details"}}`` (docs/api.md, "Errors")."""

    error: ErrorDetail


class Status(_Out):
    status: str


class Document(BaseModel):
    """An OpenAPI 3.1 document (this one)."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    paths: dict[str, Any]


class Approval(_Out):
    id: str
    run_id: str
    step_id: str
    round: int
    status: Literal["pending", "approved", "rejected", "changes_requested", "cancelled"]
    prompt: str | None
    comment: str | None
    decided_by: str | None
    call: dict[str, Any] | None  # the tool call a policy sent for approval; null for approval steps
    created_at: datetime
    decided_at: datetime | None


class Question(_Out):
    id: str
    run_id: str
    step_id: str
    question: str
    status: Literal["pending", "answered", "cancelled"]
    answer: Any
    answered_by: str | None
    created_at: datetime
    answered_at: datetime | None


class ItemCounts(_Out):
    total: int
    succeeded: int
    failed: int
    running: int
    pending: int
    cancelled: int


class Item(_Out):
    """One item of a for-each step."""

    index: int
    status: StepStatus
    attempt: int
    output: Any
    error: dict[str, Any] | None
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None


class ItemPage(_Out):
    items: list[Item]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Step(_Out):
    id: str
    type: str
    status: StepStatus
    attempt: int
    max_attempts: int
    queue: str
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    output: Any
    error: dict[str, Any] | None
    skipped_reason: str | None
    worker: str | None
    usage: dict[str, Any] | None
    waiting_on: str | None
    items: ItemCounts | None = Field(None, description="A for-each step's items by status (`running`: queued, "
                                     "running or retrying); absent on other steps.")
    policy: list[dict[str, Any]]
    reused: bool = Field(description="A fork's step that kept the original run's output instead of running "
                                     "(no usage charged).")


class WorkflowRef(_Out):
    id: str
    version: int
    name: str | None


class OutputFile(_Out):
    name: str
    size_bytes: int
    url: str
    url_expires_at: datetime


class ForkedFrom(_Out):
    """The run and step a fork was made from (POST /runs/{run_id}/fork)."""

    run_id: str
    step_id: str


class RunSummary(_Out):
    """A run as GET /runs lists it."""

    id: str
    workflow: WorkflowRef
    status: RunStatus
    waiting_on: str | None
    current_step: str | None = Field(description="The step holding the run: running, else waiting, else queued.")
    pending_approvals: int = Field(ge=0, description="How many approval requests wait for a decision "
                                                     "(GET /runs/{run_id} lists them in `approvals`).")
    input: Any
    output: Any
    error: dict[str, Any] | None
    trigger_type: Literal["api", "rerun", "webhook", "fork", "schedule", "event", "workflow"] = Field(
        description="What started the run; `workflow`: a parent run's `workflow` step (see parent_run_id).")
    triggered_by: str | None
    retry_of: str | None
    forked_from: ForkedFrom | None
    parent_run_id: str | None = Field(description="A child run's parent run (its `workflow` step started it).")
    parent_step_id: str | None = Field(description="The parent's `workflow` step that started this run.")
    attempt: int
    priority: int = Field(description="1 (first) to 9 (last): the order its steps are admitted to their queues' "
                                      "windows in, within its tenant's share (docs/flow-control.md).")
    risk_level: Literal["low", "medium", "high"] | None
    limits: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    usage: dict[str, Any]
    output_files: list[OutputFile]


class Run(RunSummary):
    """A run with its steps, as GET /runs/{run_id} and every action on a run answer."""

    steps: list[Step]
    approvals: list[Approval] = Field(description="The approval requests waiting for a decision.")
    questions: list[Question] = Field(description="The questions waiting for an answer.")
    children: list[str] = Field(description="The child runs its `workflow` steps started, oldest first.")
    failed_steps: list[str] = Field(description="The steps that failed for good; in a succeeded run, the ones "
                                                "whose `on_failure: continue` let it go on.")


class RunPage(_Out):
    runs: list[RunSummary]
    next_cursor: str | None


class Event(_Out):
    seq: int
    type: str
    step_id: str | None
    attempt: int | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(_Out):
    events: list[Event]
    next_after: int


class RunContext(_Out):
    run: dict[str, Any]
    input: Any
    steps: dict[str, Any]


class VersionRef(_Out):
    version: int
    created_at: datetime


class WorkflowSummary(_Out):
    id: str
    name: str
    kind: Literal["workflow", "conversational"]
    version: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = Field(description="When DELETE /workflows/{id} archived it; null while live.")


class Workflow(WorkflowSummary):
    """GET /workflows/{id}: the latest definition and every version."""

    versions: list[VersionRef]
    definition: dict[str, Any] | None


class WorkflowList(_Out):
    workflows: list[WorkflowSummary]


class WorkflowVersion(_Out):
    id: str
    version: int
    name: str | None
    definition: dict[str, Any]
    created_at: datetime


class ApprovalList(_Out):
    approvals: list[Approval]


class QuestionList(_Out):
    questions: list[Question]


class Delivery(_Out):
    run_id: str
    step_id: str


class TriggerError(_Out):
    """A workflow whose trigger matched the event name but started no run, and why."""

    workflow_id: str
    code: str
    message: str


class EventAccepted(_Out):
    id: str
    duplicate: bool = Field(description="The event's id was seen before: nothing was started or delivered again.")
    started_runs: list[str] = Field(description="The runs the event's triggers started.")
    delivered_to: list[Delivery]
    trigger_errors: list[TriggerError]


class Token(_Out):
    id: str
    role: Literal["viewer", "operator", "admin"]
    name: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(Token):
    token: str


class TokenList(_Out):
    tokens: list[Token]


class WebhookSecret(_Out):
    id: str
    workflow_id: str
    created_at: datetime
    expires_at: datetime | None


class WebhookSecretCreated(WebhookSecret):
    secret: str


class WebhookSecretList(_Out):
    webhook_secrets: list[WebhookSecret]


class TenantPolicy(_Out):
    policy: dict[str, Any]


class ActionRequest(_Out):
    """A diagnosis' action as an API call."""

    method: str
    path: str = Field(description="Under the API's base URL (…/api/v1).")
    body: Any = Field(description="The JSON body (null: none); `<…>` marks what the operator must fill in.")


class Cause(_Out):
    kind: str
    step_id: str | None
    message: str
    action: str = Field(description="The operator's next action, for a person to read.")
    request: ActionRequest | None = Field(description="The action as an API call, when it is one.")
    command: str | None = Field(description="The action as a shell line to paste: a curl call reading "
                                "$SWITCHYARD_URL (the base URL, …/api/v1) and $SWITCHYARD_TOKEN, or a "
                                "`switchyard` command.")


class Diagnosis(_Out):
    run_id: str
    status: RunStatus
    waiting_on: str | None
    causes: list[Cause]


class AnalyticsSummary(_Out):
    since: datetime
    until: datetime
    live_runs: dict[str, int]
    recent_runs: dict[str, int]
    success_rate: float | None
    steps_executed: int
    usage: dict[str, float]


class Point(_Out):
    t: datetime
    value: float


class Timeseries(_Out):
    metric: str
    bucket: Literal["minute", "hour", "day"]
    since: datetime
    until: datetime
    points: list[Point]


class WindowShare(_Out):
    in_window: int = Field(description="The places the caller's tenant holds (its steps queued in the broker or running).")
    held: int = Field(description="The tenant's step messages waiting in the database for room.")
    share: float = Field(description="The tenant's part of the places in use, 0 to 1.")


class Window(_Out):
    """A queue's dispatch window (docs/flow-control.md)."""

    size: int = Field(description="The most step messages the broker holds for the queue, running steps included "
                                  "(SWITCHYARD_DISPATCH_WINDOW or its queue's own). While the queue has a backlog, the "
                                  "scheduler may stretch the default window to a quarter of a second of the queue's drain "
                                  "(SWITCHYARD_WINDOW_SECONDS, at most SWITCHYARD_WINDOW_MAX): `in_use` can then be "
                                  "above it. A queue's own window is never stretched.")
    in_use: int = Field(description="The places taken: the queue's step messages in the broker and its steps running.")
    held: int = Field(description="Step messages of every tenant waiting in the database for room.")
    tenant: WindowShare
    tenants: int = Field(description="How many tenants hold or wait for places (never named).")


class Queue(_Out):
    name: str
    depth: int | None
    consumers: int
    workers: list[str]
    enqueued_last_minute: int
    completed_last_minute: int
    window: Window


class WorkflowKey(_Out):
    workflow_id: str
    key: str = Field(description="A workflow-level concurrency key as rendered from its runs' input.")
    active: int = Field(description="The runs holding it (running, waiting or paused).")
    waiting: int = Field(description="The runs queued, waiting for room under it.")


class StepKey(_Out):
    key: str = Field(description="A step-level concurrency key as rendered.")
    running: int = Field(description="The attempts holding it (queued or running).")
    waiting: int = Field(description="The steps pending, waiting for room under it.")


class ConcurrencyKeys(_Out):
    """The caller's concurrency keys that are held or waited for (docs/flow-control.md)."""

    workflow_keys: list[WorkflowKey]
    step_keys: list[StepKey]


class QueueList(_Out):
    queues: list[Queue]
    concurrency: ConcurrencyKeys
    at: datetime


class Worker(_Out):
    name: str
    status: str
    pool: dict[str, Any]
    queues: list[str]
    active_tasks: int
    tasks: list[dict[str, Any]]
    processed: int
    last_heartbeat: datetime | None
    answered_at: datetime


class WorkerList(_Out):
    workers: list[Worker]
