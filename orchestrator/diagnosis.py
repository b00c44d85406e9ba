"""Why a run is not moving, and what would move it — pure, no I/O.

``diagnose()`` reads facts gathered by the caller (the run's steps with their ages and leases, its open
approvals and questions, and how many workers consume each queue) and names every cause it finds,
each with the operator's next action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from orchestrator.core.vocabulary import ErrorCode
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus


@dataclass(frozen=True)
class StepFacts:
    step_id: str
    type: str
    status: StepStatus
    queue: str
    attempt: int
    lease_expired: bool = False
    due_in_s: float | None = None  # a retry's or timer's due time, seconds from now (negative: overdue)
    correlation_key: str | None = None
    waiting_on: str | None = None  # what a waiting agent or tool step waits on (question, approval, budget)
    queued_for_s: float | None = None  # how long a queued step has waited for a worker


@dataclass(frozen=True)
class Cause:
    kind: str  # paused, budget_exceeded, approval, question, event, timer, retry, no_consumers, queued,
    # worker_lost, scheduler, failed, cancelled
    step_id: str | None
    message: str
    action: str

    def as_json(self) -> dict:
        return asdict(self)


def diagnose(
    run_id: str,
    status: RunStatus,
    error: Mapping | None,
    steps: Sequence[StepFacts],
    *,
    approvals: Mapping[str, str],
    questions: Mapping[str, str],
    consumers: Mapping[str, int] | None,
) -> list[Cause]:
    """Every reason the run is where it is. ``approvals`` and ``questions`` map a step id to its open
    approval or question id; ``consumers`` maps a queue to its consuming workers (None: unknown)."""
    if status in TERMINAL_RUN:
        if status is RunStatus.SUCCEEDED:
            return []
        what = (error or {}).get("message") or status.value
        return [Cause(status.value, (error or {}).get("step_id"), f"the run ended {status.value}: {what}",
                      f"POST /runs/{run_id}/retry to go on from the failed step, or /rerun for a new run")]
    causes: list[Cause] = []
    if status is RunStatus.PAUSED:
        causes.append(Cause("paused", None, "the run is paused: nothing new is dispatched",
                            f"POST /runs/{run_id}/resume"))
    if status is RunStatus.QUEUED:
        causes.append(Cause("scheduler", None, "no scheduler has picked the run up yet",
                            "check that a `switchyard scheduler` process is running and reaches the database"))
    for step in steps:
        cause = _step_cause(run_id, step, approvals, questions, consumers)
        if cause is not None:
            causes.append(cause)
    return causes


def _step_cause(run_id, step: StepFacts, approvals, questions, consumers) -> Cause | None:
    sid = step.step_id
    if step.status is StepStatus.WAITING:
        if step.waiting_on == "budget":
            return Cause("budget_exceeded", sid, f"step {sid!r} stopped before a call that would exceed the run's limits",
                         f"POST /runs/{run_id}/resume with {{\"limits\": {{\"tokens\": ...}}}} to raise them, or /cancel")
        if sid in approvals:
            return Cause("approval", sid, f"step {sid!r} waits for an approval ({approvals[sid]})",
                         f"POST /runs/{run_id}/approvals/{approvals[sid]}/approve, /reject or /request_changes")
        if sid in questions:
            return Cause("question", sid, f"step {sid!r} waits for the answer to a question ({questions[sid]})",
                         f"POST /runs/{run_id}/questions/{questions[sid]}/answer with {{\"answer\": ...}}")
        if step.type == "wait_event":
            return Cause("event", sid,
                         f"step {sid!r} waits for an event with correlation_key {step.correlation_key!r}"
                         + _due(step, "times out"),
                         f"POST /events with {{\"correlation_key\": {step.correlation_key!r}}}")
        if step.type == "timer":
            return Cause("timer", sid, f"step {sid!r} is a timer" + _due(step, "fires"),
                         "nothing: the scheduler fires it when it is due")
    if step.status is StepStatus.RETRYING:
        return Cause("retry", sid, f"step {sid!r} failed attempt {step.attempt} and is retried" + _due(step, "next"),
                     "nothing: the scheduler dispatches the next attempt when it is due")
    if step.status is StepStatus.QUEUED:
        if consumers is not None and consumers.get(step.queue, 0) == 0:
            return Cause("no_consumers", sid, f"step {sid!r} is queued on {step.queue!r}, which no worker consumes",
                         f"start a worker for it: switchyard worker --queues {step.queue}")
        return Cause("queued", sid, f"step {sid!r} is queued on {step.queue!r}, waiting for a free worker",
                     "nothing, or add workers for that queue if it stays long")
    if step.status is StepStatus.RUNNING and step.lease_expired:
        return Cause(ErrorCode.WORKER_LOST.value, sid, f"the worker running step {sid!r} stopped heartbeating",
                     "nothing: the scheduler reclaims the attempt and retries it; check that worker's machine")
    return None


def _due(step: StepFacts, verb: str) -> str:
    if step.due_in_s is None:
        return ""
    if step.due_in_s <= 0:
        return f"; it {verb} now (overdue by {-step.due_in_s:.1f}s)"
    return f"; it {verb} in {step.due_in_s:.1f}s"
