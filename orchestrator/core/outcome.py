"""What an attempt's outcome does: retries, suspensions, usage and policy decisions, fail-fast, the
steps its success makes ready, and the run's end when it was the last step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator import dag, metering, policy, retry
from orchestrator.core import items, stopping
from orchestrator.core.inputs import AttemptReport, Env
from orchestrator.core.reports import USAGE_KEYS, Outcome, empty_usage
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import NEXT_ATTEMPT, NOW, Draft, DueIn, Request, Transition
from orchestrator.core.vocabulary import ErrorCode, EventType, WaitsOn
from orchestrator.definitions import Definition
from orchestrator.messages import StepMessage
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

# Deciding which steps a success made ready reads the other needs of the steps that need it; past
# this many (a wide join) the scheduler decides, once for many reports, instead of every report.
QUEUE_READY_MAX_READS = 32


def on_report(state: RunState, definition: Definition, report: AttemptReport, env: Env) -> Transition | None:
    """A running attempt's outcome; None if the step is not running at that attempt (a stale or
    duplicate report)."""
    step = state.steps.get(report.step_id)
    if step is None or step.status is not StepStatus.RUNNING or step.attempt != report.attempt:
        return None
    draft = Draft(state)
    if items.parent_of(step.step_id) is not None:
        settle_item(draft, definition, step, report.outcome, env)
        return draft.finish()
    settle(draft, definition, step, report.outcome, env)
    finished = _finish_if_last(draft, definition, step, report.outcome)
    queued = report.queue_ready and not finished and _queue_ready(draft, definition, step)
    if not finished and not queued:
        draft.run_values["has_work"] = True
    elif holds_key(definition, step.step_id) or (finished and definition.concurrency_keys):
        # It released a concurrency key: the scheduler's pass (rung) wakes whoever waits for it.
        draft.run_values["has_work"] = True
    return draft.finish()


def settle(draft: Draft, definition: Definition, step: StepState, outcome: Outcome, env: Env) -> None:
    """Apply ``outcome`` to ``step`` (running, or waiting for the outside world), the subject of the
    draft. A step failing for good fails its run (fail-fast); in a run that already ended (a graceful
    cancel lets steps finish) the step's result is recorded and nothing else happens."""
    usage = _Usage(draft, env.prices, getattr(definition.step(step.step_id), "model", None), outcome)
    values = {"policy": [*step.policy, *outcome.policy]} if outcome.policy else {}
    finished = dict(completed_at=NOW, lease_expires_at=None, due_at=None)
    if outcome.suspend is not None and draft.status in TERMINAL_RUN:
        # Nothing resolves a wait in an ended run (a graceful cancel let the attempt run on): it stops.
        stopped = stopping.stopped_error(f"the run is {draft.status}; the step cannot wait")
        _move(draft, step, outcome, StepStatus.CANCELLED, error=stopped, **finished, **values)
        draft.event(EventType.STEP_CANCELLED, step.step_id, step.attempt, reason=ErrorCode.RUN_STOPPED.value)
        usage.add(step_done=False)
        return
    if outcome.suspend is not None:
        _suspend(draft, step, outcome, env, values)
        usage.add(step_done=False)
        return
    if outcome.succeeded:
        done = usage.of(step_done=True)
        _move(draft, step, outcome, StepStatus.SUCCEEDED, output=outcome.output,
              usage=done if outcome.usage or env.prices else None, error=None, **finished, **values)
        draft.event(EventType.STEP_COMPLETED, step.step_id, step.attempt, output=outcome.output)
        usage.add(step_done=True)
        return
    error = outcome.error
    if outcome.cancelled:
        _move(draft, step, outcome, StepStatus.CANCELLED, error=error.as_json(), **finished, **values)
        draft.event(EventType.STEP_CANCELLED, step.step_id, step.attempt, reason=error.code)
        usage.add(step_done=False)  # what a stopped attempt used before it stopped was still spent
        return
    _fail(draft, definition, step, outcome, env, usage=usage, values=values)


def settle_any(draft: Draft, definition: Definition, step: StepState, outcome: Outcome, env: Env) -> None:
    """settle(), or settle_item() for a for-each item."""
    if items.parent_of(step.step_id) is None:
        settle(draft, definition, step, outcome, env)
    else:
        settle_item(draft, definition, step, outcome, env)


def settle_item(draft: Draft, definition: Definition, item: StepState, outcome: Outcome, env: Env) -> None:
    """A for-each item's outcome (retried like a step's), then its step's: the item counted, the next
    items dispatched, and the step settled when that decides it (the snapshot holds the step, and
    every step if the item did not succeed: the step may fail its run). What the step's end makes
    ready is the scheduler's to decide."""
    settle(draft, definition, item, outcome, env)
    settles_step = items.account(draft, definition, item)
    if settles_step is not None:
        parent_id = items.parent_of(item.step_id)
        settle(draft, definition, draft.step(parent_id), settles_step, env)
        if draft.step(parent_id).status is not StepStatus.SUCCEEDED:
            # k-of-n can no longer succeed: the items still in flight are stopped with their step.
            items.stop(draft, [parent_id], stopping.stopped_error(f"step {parent_id!r} failed"))
        draft.run_values["has_work"] = True


def _fail(draft: Draft, definition: Definition, step: StepState, outcome: Outcome, env: Env, *, usage: _Usage,
          values: dict[str, Any]) -> None:
    """An error: retried after a backoff if the policy allows it, else the step (and its run) fail."""
    error, run_ended = outcome.error, draft.status in TERMINAL_RUN
    decision = _retry_decision(definition, step, error.retryable and not run_ended, env.rand)
    if decision.retry:
        _move(draft, step, outcome, StepStatus.RETRYING, error=error.as_json(), due_at=DueIn(decision.delay_s),
              lease_expires_at=None, **values)
        draft.event(EventType.STEP_RETRYING, step.step_id, step.attempt, error=error.as_json(),
                    delay_s=round(decision.delay_s, 3), next_attempt=step.attempt + 1)
        usage.add(step_done=False)
        return
    _move(draft, step, outcome, StepStatus.FAILED, error=error.as_json(), completed_at=NOW, lease_expires_at=None,
          due_at=None, **values)
    draft.event(EventType.STEP_FAILED, step.step_id, step.attempt, error=error.as_json())
    usage.add(step_done=True)
    # `on_failure: continue`: the run goes on; the steps that need this one follow their join rule.
    # A for-each item's failure is its step's to count (core.items).
    if not run_ended and definition.step(step.step_id).on_failure != "continue" and items.parent_of(step.step_id) is None:
        stopping.fail_run(draft, step.step_id, error.as_json())


def holds_key(definition: Definition, step_id: str) -> bool:
    """Whether the step holds a concurrency key while it runs (a for-each item never does)."""
    return items.parent_of(step_id) is None and definition.step(step_id).concurrency is not None


def will_fail_for_good(definition: Definition, step: StepState, outcome: Outcome, run_status: RunStatus) -> bool:
    """Whether ``outcome`` fails ``step`` for good and so fails its run (which needs every step read)."""
    if outcome.error is None or outcome.suspend is not None or outcome.cancelled or run_status in TERMINAL_RUN:
        return False
    return not _retry_decision(definition, step, outcome.error.retryable, lambda: 0.0).retry


def _retry_decision(definition: Definition, step: StepState, retryable: bool,
                    rand: Callable[[], float]) -> retry.RetryDecision:
    """The retry policy's decision on the step's failed attempt. A reopened step gets a fresh budget
    (its row's max_attempts moved up) while attempt numbers, and so Celery task ids, keep growing:
    decide on the attempt's place within the current budget."""
    policy_ = definition.retry_policy(definition.step(step.step_id))
    in_budget = step.attempt - (step.max_attempts - policy_.max_attempts)
    return retry.decide(policy_, in_budget, retryable, rand)


def _move(draft: Draft, step: StepState, outcome: Outcome, target: StepStatus, **values: Any) -> None:
    """The subject's move, then its policy decisions' events (only a report that moved the step leaves them)."""
    draft.move(step, target, only_from=[step.status], reported=True, **values)
    if outcome.policy:
        for decision in outcome.policy:
            draft.event(EventType.POLICY_DECISION, step.step_id, step.attempt, **decision)
        current = draft.run_values.get("risk_level", draft.run.risk_level)
        risk = policy.highest_risk([current, *(d.get("risk") for d in outcome.policy)])
        if risk != current:
            draft.run_values["risk_level"] = risk


def _suspend(draft: Draft, step: StepState, outcome: Outcome, env: Env, values: dict[str, Any]) -> None:
    """A step gave its worker back: it waits on a question or an approval in the inbox, or on a paused run."""
    suspension = outcome.suspend
    if suspension.kind == WaitsOn.RATE_LIMIT:
        # An LLM rate limit: queued again at the due time, at the same attempt (requeue_rate_limited).
        due_in_s = max(suspension.due_in_s or 0.0, 0.0)
        _move(draft, step, outcome, StepStatus.WAITING, checkpoint=suspension.checkpoint, lease_expires_at=None,
              waiting_on=suspension.kind, due_at=DueIn(due_in_s), **values)
        draft.event(EventType.STEP_WAITING, step.step_id, step.attempt, waiting_on=WaitsOn.RATE_LIMIT.value,
                    reason=suspension.text, retry_in_s=round(due_in_s, 3))
        return
    _move(draft, step, outcome, StepStatus.WAITING, checkpoint=suspension.checkpoint, lease_expires_at=None,
          waiting_on=suspension.kind, **values)
    if suspension.kind == WaitsOn.BUDGET:
        # Paused before the call, not failed: an operator raises the budget (resume) or cancels.
        if draft.status not in TERMINAL_RUN and draft.status is not RunStatus.PAUSED:
            draft.move_run(RunStatus.PAUSED)
        draft.event(EventType.STEP_WAITING, step.step_id, step.attempt, waiting_on=WaitsOn.BUDGET.value,
                    reason=suspension.text)
        draft.event(EventType.RUN_PAUSED, step.step_id, step.attempt, reason="budget_exceeded", detail=suspension.text)
        return
    if suspension.kind == WaitsOn.APPROVAL:
        request = Request("approval", env.new_id("apr"), step.step_id, suspension.text[:2000], suspension.call)
        draft.requests.append(request)
        draft.event(EventType.STEP_WAITING, step.step_id, step.attempt, waiting_on=WaitsOn.APPROVAL.value,
                    approval_id=request.id, call=suspension.call)
        return
    request = Request("question", env.new_id("q"), step.step_id, suspension.text)
    draft.requests.append(request)
    draft.event(EventType.STEP_WAITING, step.step_id, step.attempt, waiting_on=WaitsOn.QUESTION.value,
                question_id=request.id)


class _Usage:
    """An attempt's usage, priced in credits (the per-step price only when the step finished), rolled
    up into the run's; ``steps`` counts steps that finished."""

    def __init__(self, draft: Draft, prices, model: str | None, outcome: Outcome):
        self.draft, self.prices, self.model, self.usage = draft, prices, model, outcome.usage

    def of(self, *, step_done: bool) -> dict[str, float]:
        if self.prices is None:
            return dict(self.usage)
        return {**self.usage, "credits": metering.credits(self.prices, self.usage, self.model, step_done)}

    def add(self, *, step_done: bool) -> None:
        usage = self.of(step_done=step_done)
        total = dict(self.draft.run_values.get("usage") or self.draft.run.usage or empty_usage())
        for key in USAGE_KEYS:
            total[key] = total.get(key, 0) + usage.get(key, 0)
        total["steps"] = total.get("steps", 0) + int(step_done)
        total["credits"] = round(total["credits"], metering.PRECISION)
        self.draft.run_values["usage"] = total


def _finish_if_last(draft: Draft, definition: Definition, step: StepState, outcome: Outcome) -> bool:
    """If the step that just succeeded was the run's last, the run succeeds here (as fail-fast fails it
    here) and the scheduler has nothing to do for it. The snapshot says so (``others_succeeded``, read
    under the lock or checked unchanged when written), unless there is no other step."""
    if not (draft.run_to is None and draft.run.status is RunStatus.RUNNING and outcome.succeeded):
        return False
    if len(definition.steps) > 1 and not draft.run.others_succeeded:
        return False
    outputs = {**(draft.run.outputs or {}), step.step_id: outcome.output}
    stopping.succeed_run(draft, {s: outputs.get(s) for s in definition.sinks})
    return True


def ready_reads(definition: Definition, step_id: str) -> list[str] | None:
    """The other needs of the steps that need ``step_id``, whose statuses deciding what its success
    makes ready reads; None if that is left to the scheduler (a step to start waits in the database,
    or there are too many to read)."""
    dependents = definition.dependents[step_id]
    # A dependent that waits in the database, has a condition or another join rule, runs for each
    # item of a list, or holds a concurrency key (its room is read under the scheduler's lock): the
    # scheduler decides.
    if not dependents or any(definition.step(d).type in dag.WAITING_TYPES or definition.step(d).when is not None
                             or definition.step(d).join != "all_succeeded" or definition.step(d).for_each is not None
                             or definition.step(d).concurrency is not None for d in dependents):
        return None
    others = sorted({n for d in dependents for n in definition.needs[d]} - {step_id})
    return None if len(others) > QUEUE_READY_MAX_READS else others


def _queue_ready(draft: Draft, definition: Definition, step: StepState) -> bool:
    """Queue the worker steps the success of ``step`` made ready, in the outcome's transaction: the
    scheduler's dispatch without the doorbell and a pass in between. True if any was queued. None are
    queued unless the run is plainly running and the snapshot holds every step deciding needs."""
    if draft.run_to is not None or draft.run.status is not RunStatus.RUNNING:
        return False
    if draft.step(step.step_id).status is not StepStatus.SUCCEEDED or ready_reads(definition, step.step_id) is None:
        return False
    queued = False
    for dependent in definition.dependents[step.step_id]:
        needs = definition.needs[dependent]
        if dependent not in draft.steps or any(n not in draft.steps for n in needs):
            return queued
        if all(draft.step(n).status is StepStatus.SUCCEEDED for n in needs):
            queued |= queue_step(draft, definition, draft.step(dependent), optional=True)
    return queued


def requeue_rate_limited(draft: Draft, definition: Definition, step: StepState, *,
                         queue: Callable[..., bool] | None = None) -> bool:
    """A step that waited on an LLM rate limit is queued again at the same attempt: the wait spent
    none (its checkpoint, kept on the row, says where it goes on from). ``queue``: how it is queued
    from `pending` (the scheduler's, under the step's concurrency key; default queue_step)."""
    # Back to `pending` one attempt down, as a delivery deferred by a pause is, so that queueing it
    # queues the same attempt number again.
    if not draft.move(step, StepStatus.PENDING, only_from=(StepStatus.WAITING,), attempt=step.attempt - 1,
                      waiting_on=None, due_at=None):
        return False
    return (queue or queue_step)(draft, definition, draft.step(step.step_id))


def queue_step(draft: Draft, definition: Definition, step: StepState, *,
               only_from: tuple[StepStatus, ...] = (StepStatus.PENDING,), optional: bool = False,
               **values: Any) -> bool:
    """Queue the step's next attempt with its message; True if the table allowed it. ``values``: more
    columns the move writes (a concurrency key it holds)."""
    message = StepMessage(draft.run.id, step.step_id, step.attempt + 1, step.queue,
                          definition.timeout_s(definition.step(step.step_id)))
    if not draft.move(step, StepStatus.QUEUED, only_from=only_from, optional=optional, queued=message,
                      attempt=NEXT_ATTEMPT, queued_at=NOW,
                      **({"due_at": None} if StepStatus.RETRYING in only_from else {}), **values):
        return False
    if optional:
        draft.move_event(EventType.STEP_QUEUED, step.step_id, step.attempt + 1)
    else:
        draft.event(EventType.STEP_QUEUED, step.step_id, step.attempt + 1)
    return True
