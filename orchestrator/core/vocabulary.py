"""The names that travel in the event log and in step errors, as enums (their values are the contract)."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """Every type of event a run's log holds."""

    RUN_CREATED = "run_created"
    RUN_STARTED = "run_started"
    RUN_RUNNING = "run_running"
    RUN_WAITING = "run_waiting"
    RUN_RESUMED = "run_resumed"
    RUN_PAUSED = "run_paused"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_RETRIED = "run_retried"
    RUN_RERUN = "run_rerun"
    STEP_QUEUED = "step_queued"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_RETRYING = "step_retrying"
    STEP_CANCELLED = "step_cancelled"
    STEP_WAITING = "step_waiting"
    STEP_DEFERRED = "step_deferred"
    STEP_CONDITION_FAILED = "step_condition_failed"  # its `when` could not be evaluated: it is skipped
    STEPS_REOPENED = "steps_reopened"
    POLICY_DECISION = "policy_decision"
    APPROVAL_DECIDED = "approval_decided"
    QUESTION_ANSWERED = "question_answered"
    EVENT_RECEIVED = "event_received"
    SCHEDULER_ERROR = "scheduler_error"


# The events that change a run's status (the tenant stream and GET /runs/{id}/events?status read them).
RUN_STATUS_EVENTS = frozenset({
    EventType.RUN_CREATED, EventType.RUN_STARTED, EventType.RUN_WAITING, EventType.RUN_RESUMED,
    EventType.RUN_RUNNING, EventType.RUN_PAUSED, EventType.RUN_SUCCEEDED, EventType.RUN_FAILED,
    EventType.RUN_CANCELLED, EventType.RUN_RETRIED,
})


class ErrorCode(StrEnum):
    """The codes of step and run errors that the engine itself sets (tools and providers add their own)."""

    RUN_STOPPED = "run_stopped"  # a step stopped because its run failed elsewhere or was cancelled
    CANCELLED = "cancelled"  # a run's error after an operator's cancel
    WORKER_LOST = "worker_lost"
    TIMEOUT = "timeout"
    STEP_ERROR = "step_error"
    EVENT_TIMEOUT = "event_timeout"
    APPROVAL_REJECTED = "approval_rejected"
    TEMPLATE_ERROR = "template_error"
    # for-each steps
    INVALID_FOR_EACH = "invalid_for_each"  # for_each did not evaluate to a list
    TOO_MANY_ITEMS = "too_many_items"
    TOO_FEW_SUCCEEDED = "too_few_succeeded"
    # sub-runs
    CHILD_RUN_FAILED = "child_run_failed"
    MAX_DEPTH_EXCEEDED = "max_depth_exceeded"


class SkipReason(StrEnum):
    """Why a step was skipped."""

    BLOCKED = "blocked"  # its run failed before it could start, or a need it required failed
    RUN_CANCELLED = "run_cancelled"
    CONDITION = "condition"  # its `when` was falsy
    UPSTREAM_SKIPPED = "upstream_skipped"  # a need it required was skipped (or, any_succeeded: none succeeded)


class WaitsOn(StrEnum):
    """What a waiting step or run waits on."""

    APPROVAL = "approval"
    QUESTION = "question"
    EVENT = "event"
    TIMER = "timer"
    BUDGET = "budget"
    CONCURRENCY = "concurrency"
    RATE_LIMIT = "rate_limit"  # an LLM rate limit: the step is queued again at its due time, same attempt
