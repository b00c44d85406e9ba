"""Typed models of the API's answers (pydantic), named as in the API's OpenAPI document.

A test (tests/integration/test_client.py) holds these fields to the served document's schemas. Fields
the API adds later are kept (``extra="allow"``) and readable as attributes, so an older client still
reads a newer API. Statuses are plain strings: ``TERMINAL_RUN`` names the ones a run ends in.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

if TYPE_CHECKING:
    from collections.abc import Awaitable

TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_STEP = frozenset({"succeeded", "failed", "cancelled", "skipped"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Approval(Model):
    id: str
    run_id: str
    step_id: str
    round: int
    status: str
    prompt: str | None = None
    comment: str | None = None
    decided_by: str | None = None
    call: dict[str, Any] | None = None
    created_at: datetime
    decided_at: datetime | None = None


class Question(Model):
    id: str
    run_id: str
    step_id: str
    question: str
    status: str
    answer: Any = None
    answered_by: str | None = None
    created_at: datetime
    answered_at: datetime | None = None


class StepError(Model):
    """Why a step (or a for-each item) failed; a failed run's ``error`` is the same, with ``step_id``.
    ``code`` is one of the step error codes (docs/api.md, "Step errors"), not an API error's: a step that
    failed is a run's state, not a refused request. ``details`` say more where the code has more to say
    (``invalid_arguments``: the ``tool``, the ``field`` and every ``problems``)."""

    code: str
    message: str
    retryable: bool = Field(False, description="Another attempt may help (absent on a run's error).")
    details: dict[str, Any] = Field(default_factory=dict)


class ItemCounts(Model):
    """A for-each step's items by status."""

    total: int
    succeeded: int
    failed: int
    running: int
    pending: int
    cancelled: int


class Item(Model):
    """One item of a for-each step."""

    index: int
    status: str
    attempt: int
    output: Any = None
    error: StepError | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class ItemPage(Model):
    items: list[Item]
    next_cursor: str | None = None


class Step(Model):
    id: str
    type: str
    status: str
    attempt: int
    max_attempts: int
    queue: str
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: Any = None
    error: StepError | None = None
    skipped_reason: str | None = None
    worker: str | None = None
    usage: dict[str, Any] | None = None
    waiting_on: str | None = None
    policy: list[dict[str, Any]] = Field(default_factory=list)
    reused: bool = Field(False, description="A fork's step that kept the original run's output.")
    items: ItemCounts | None = Field(None, description="A for-each step's items by status.")


class WorkflowRef(Model):
    id: str
    version: int
    name: str | None = None


class OutputFile(Model):
    name: str
    size_bytes: int
    url: str
    url_expires_at: datetime


class ForkedFrom(Model):
    run_id: str
    step_id: str


class RunSummary(Model):
    """A run as lists show it (no steps). ``wait()`` reads it again until it ends."""

    id: str
    workflow: WorkflowRef
    status: str
    waiting_on: str | None = None
    current_step: str | None = None
    pending_approvals: int = Field(0, description="Approval requests waiting for a decision.")
    input: Any = None
    output: Any = None
    error: StepError | None = None
    trigger_type: str
    triggered_by: str | None = None
    retry_of: str | None = None
    forked_from: ForkedFrom | None = Field(None, description="A fork's original run and step.")
    parent_run_id: str | None = Field(None, description="A child run's parent (its `workflow` step started it).")
    parent_step_id: str | None = Field(None, description="The parent's `workflow` step that started this run.")
    attempt: int
    priority: int = Field(5, description="1 (first) to 9 (last), the order its steps are dispatched in.")
    risk_level: str | None = None
    limits: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    output_files: list[OutputFile] = Field(default_factory=list)

    _client: Any = PrivateAttr(default=None)

    @field_validator("pending_approvals", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        # APIs before the contract's correction answered the requests themselves: count them.
        return len(value) if isinstance(value, list) else value

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_RUN

    def wait(self, timeout: float | None = None) -> Run | Awaitable[Run]:
        """The run once it has ended (the client's ``runs.wait``); awaitable from an ``AsyncClient``."""
        if self._client is None:
            raise RuntimeError("this run was not read through a client; use client.runs.wait(run_id)")
        return self._client.runs.wait(self.id, timeout=timeout)


class Run(RunSummary):
    """A run with its steps, as ``runs.get`` and every action on a run answer it."""

    steps: list[Step] = Field(default_factory=list)
    failed_steps: list[str] = Field(default_factory=list)
    approvals: list[Approval] = Field(default_factory=list, description="The requests waiting for a decision.")
    questions: list[Question] = Field(default_factory=list, description="The open questions.")
    children: list[str] = Field(default_factory=list, description="The child runs its `workflow` steps started.")

    def step(self, step_id: str) -> Step:
        """The step with this id (KeyError if the run has none)."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


class RunPage(Model):
    runs: list[RunSummary]
    next_cursor: str | None = None


class Event(Model):
    seq: int
    type: str
    step_id: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class EventPage(Model):
    events: list[Event]
    next_after: int


class RunContext(Model):
    run: dict[str, Any]
    input: Any = None
    steps: dict[str, Any]


class VersionRef(Model):
    version: int
    created_at: datetime


class WorkflowSummary(Model):
    id: str
    name: str
    kind: str
    version: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = Field(None, description="Set while the workflow is archived.")


class Workflow(WorkflowSummary):
    versions: list[VersionRef] = Field(default_factory=list)
    definition: dict[str, Any] | None = None


class WorkflowList(Model):
    workflows: list[WorkflowSummary]


class WorkflowVersion(Model):
    id: str
    version: int
    name: str | None = None
    definition: dict[str, Any]
    created_at: datetime


class ApprovalList(Model):
    approvals: list[Approval]


class QuestionList(Model):
    questions: list[Question]


class Delivery(Model):
    run_id: str
    step_id: str


class TriggerError(Model):
    """A workflow whose trigger matched the event but started no run, and why."""

    workflow_id: str
    code: str
    message: str


class EventAccepted(Model):
    id: str
    duplicate: bool = False
    started_runs: list[str] = Field(default_factory=list)
    delivered_to: list[Delivery] = Field(default_factory=list)
    trigger_errors: list[TriggerError] = Field(default_factory=list)


class Schedule(Model):
    id: str
    workflow_id: str
    cron: str
    timezone: str
    input: Any = None
    overlap: str
    catchup: str
    enabled: bool
    next_fire_times: list[datetime] = Field(default_factory=list)
    last_run_id: str | None = None


class ScheduleList(Model):
    schedules: list[Schedule]


class ActionRequest(Model):
    method: str
    path: str
    body: Any = None


class Cause(Model):
    kind: str
    step_id: str | None = None
    message: str
    action: str
    request: ActionRequest | None = None
    command: str | None = None


class Diagnosis(Model):
    run_id: str
    status: str
    waiting_on: str | None = None
    causes: list[Cause]


class BulkSkip(Model):
    run_id: str
    reason: str


class BulkResult(Model):
    """A bulk action: runs matched, applied (``runs``: for rerun and fork the new runs; on a dry run the
    runs it would apply to) and skipped, with why."""

    matched: int
    applied: int
    skipped: list[BulkSkip]
    runs: list[str]


class ComparedStepRun(Model):
    status: str
    attempts: int
    duration_s: float | None = None
    tokens_in: float
    tokens_out: float
    credits: float
    reused: bool


class ComparedStep(Model):
    step_id: str
    input_changed: bool
    output_changed: bool
    output_diff: list[dict[str, Any]] = Field(default_factory=list)
    run: ComparedStepRun | None = None
    other: ComparedStepRun | None = None


class ComparedRun(Model):
    id: str
    workflow_id: str
    version: int
    status: str
    usage: dict[str, Any] = Field(default_factory=dict)
    forked_from: ForkedFrom | None = None


class Comparison(Model):
    """Two runs side by side, step by step in graph order, and the first step that diverges."""

    run: ComparedRun
    other: ComparedRun
    first_divergence: str | None = None
    steps: list[ComparedStep]
