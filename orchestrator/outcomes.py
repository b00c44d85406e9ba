"""The one writer of step outcomes (STYLE.md habit 3).

Workers report through ``claim_attempt`` and ``record_outcome``; the scheduler reports a lost worker
through ``apply_outcome``. Retry and fail-fast are decided here by the pure modules and written in
the same transaction as the step's new status and its events.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import dag, metering, policy, retry
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.db.repository import RunChanges, StepView
from orchestrator.db.types import db_now
from orchestrator.definitions import Definition
from orchestrator.errors import StepError
from orchestrator.messages import StepMessage, task_id
from orchestrator.policy import Limits
from orchestrator.settings import PriceTable
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

USAGE_KEYS = ("steps", "tool_calls", "llm_calls", "tokens_in", "tokens_out", "credits")


def empty_usage() -> dict[str, float]:
    return {key: 0 for key in USAGE_KEYS}


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    retryable: bool

    @classmethod
    def of(cls, exc: StepError) -> ErrorInfo:
        return cls(exc.code, exc.message, exc.retryable)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


@dataclass(frozen=True)
class Suspension:
    """A step gave its worker back to wait — on a person's answer (``question``), on the approval of
    a tool call (``approval``, the ``call``) or on a raised budget (``budget``) — and goes on from
    ``checkpoint`` when it is dispatched again."""

    kind: str
    text: str
    checkpoint: dict[str, Any]
    call: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: an output, an error, or a suspension; usage in every case."""

    output: Any = None
    error: ErrorInfo | None = None
    usage: dict[str, float] = field(default_factory=dict)
    suspend: Suspension | None = None
    # The policy decisions taken about the attempt's tool calls, in order.
    policy: list[dict[str, Any]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.suspend is None

    @property
    def cancelled(self) -> bool:
        return self.error is not None and self.error.code == "run_stopped"


WORKER_LOST = Outcome(error=ErrorInfo("worker_lost", "the worker stopped heartbeating; its lease expired", True))


@dataclass(frozen=True)
class Claim:
    """A claimed attempt and everything its executor needs to know."""

    run_id: str
    step_id: str
    attempt: int
    tenant_id: str
    workflow_id: str
    run_input: Any
    run_attempt: int
    outputs: dict[str, Any]
    definition: Definition
    checkpoint: dict[str, Any] | None
    approval: dict[str, Any] | None
    run_usage: dict[str, float] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    tenant_policy: policy.Policy | None = None
    # The run and step as the claim left them, for record_success_as_claimed (PostgreSQL only).
    seen: repo.SeenAtClaim | None = None


def effective_limits(definition: Definition, raised: dict[str, Any] | None, tenant: policy.Policy | None) -> Limits:
    """The definition's limits with an operator's raised ones over them, capped by the tenant's."""
    return policy.combined_limits(definition.policy.limits.model_copy(update=raised or {}),
                                  tenant.limits if tenant is not None else None)


def claim_attempt(
    session: Session, catalog: DefinitionCatalog, run_id: str, step_id: str, attempt: int, worker: str, lease_s: float
) -> Claim | None:
    """queued -> running for exactly this attempt, with a lease; None if the message is stale or a
    duplicate, or if its run is paused (see defer_attempt).

    One statement on PostgreSQL, so ``session`` may be in autocommit (the worker's is: two round trips
    fewer); what is read after it (definition, outputs, approval) needs no lock.
    """
    found = repo.lock_run_and_claim(session, run_id, step_id, attempt, worker, lease_s)
    if found is None or not found.claimed:
        return None
    run = found.run
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    tenant = policy.Policy.model_validate(run.tenant_policy) if run.tenant_policy else None
    # Read the other steps' outputs and the latest approval only if the step's templates use them:
    # most steps' arguments are plain values, and these reads grow with the run.
    names = definition.template_names(step_id)
    return Claim(
        run_id=run_id, step_id=step_id, attempt=attempt, tenant_id=run.tenant_id, workflow_id=run.workflow_id,
        run_input=run.input, run_attempt=run.attempt,
        outputs=repo.succeeded_outputs(session, run_id) if "steps" in names else {},
        definition=definition, checkpoint=found.checkpoint,
        approval=repo.latest_approval_decision(session, run_id) if "approval" in names else None,
        run_usage=dict(run.usage or {}), limits=effective_limits(definition, run.limits, tenant),
        tenant_policy=tenant, seen=found.seen,
    )


def defer_attempt(session: Session, run_id: str, step_id: str, attempt: int) -> bool:
    """A message that arrived while its run is paused puts its step back to `pending` (the attempt is
    not spent), so resume dispatches it again; True if it did. Call it in a transaction when
    claim_attempt found nothing to claim."""
    run = repo.lock_run(session, run_id)
    if run is None or run.status != RunStatus.PAUSED or not repo.update_steps(
        session, run_id, [step_id], StepStatus.PENDING,
        only_from=[StepStatus.QUEUED], at_attempt=attempt, attempt=attempt - 1, queued_at=None,
    ):
        return False
    changes = RunChanges(run)
    changes.event("step_deferred", step_id, attempt, reason="run_paused")
    repo.apply_run_changes(session, changes)
    return True


@dataclass(frozen=True)
class Recorded:
    applied: bool
    revoke: list[str] = field(default_factory=list)
    # False: the outcome left the scheduler nothing to do (it finished the run, or queued what came next).
    scheduler_has_work: bool = True
    # The steps the outcome queued: their messages (with ``outbox_id``), to publish after the commit.
    messages: list[StepMessage] = field(default_factory=list)


def record_outcome(
    session: Session,
    catalog: DefinitionCatalog,
    run_id: str,
    step_id: str,
    attempt: int,
    outcome: Outcome,
    rand: Callable[[], float] = random.random,
    prices: PriceTable | None = None,
    dispatch: bool = False,
) -> Recorded:
    """Write a worker's report of one attempt; a stale or duplicate report changes nothing.

    The attempt's usage is priced in credits by ``prices`` and rolled up on the run. Returns which
    Celery tasks fail-fast cancelled, for the caller to revoke after the commit. With ``dispatch``, a
    success queues the steps it made ready where that is plain (see _ready_to_queue), and returns their
    messages for the caller to publish after the commit.
    """
    locked = repo.lock_run_with_step(session, run_id, step_id)
    if locked is None:
        return Recorded(False)
    run, view, recorded_policy = locked
    if view.status != StepStatus.RUNNING or view.attempt != attempt:
        return Recorded(False)
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    recorded = _apply_and_write(session, definition, RunChanges(run), view, recorded_policy, run.others_succeeded,
                                outcome, rand, prices, dispatch)
    return recorded or Recorded(False)


def record_success_as_claimed(
    session: Session,
    catalog: DefinitionCatalog,
    seen: repo.SeenAtClaim,
    outcome: Outcome,
    prices: PriceTable | None = None,
    dispatch: bool = False,
) -> Recorded | None:
    """Write a success from what the claim left (``seen``) in one statement, without reading or
    locking the run first, if the run's last_seq shows nothing happened to it since: on PostgreSQL,
    a run's last step or a step whose success queues nothing. Meant for a session in autocommit: it
    saves BEGIN, the locking read and COMMIT, three of the outcome's four round trips.

    None if it wrote nothing: not a success, the run changed since the claim, or the success has
    more to write than one statement (it queues steps); record_outcome then writes it.
    """
    if not outcome.succeeded or session.get_bind().dialect.name != "postgresql":
        return None
    run, view = seen.run, dataclasses.replace(seen.step)  # apply_outcome moves the view along
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    # Only a step that no other step needs can be the run's last to succeed: for any other, the
    # steps that need it are still to run.
    last_possible = not definition.dependents[view.step_id]
    return _apply_and_write(session, definition, RunChanges(run, unchanged_since=run.last_seq), view, seen.policy,
                            last_possible, outcome, random.random, prices, dispatch)


def _apply_and_write(session: Session, definition: Definition, changes: RunChanges, view: StepView,
                     recorded_policy: list | None, others_succeeded: bool, outcome: Outcome,
                     rand: Callable[[], float], prices: PriceTable | None, dispatch: bool) -> Recorded | None:
    """The outcome of the running ``view`` applied to its run and written; None if nothing was
    written (a stale report, or with ``changes.unchanged_since`` a run that changed or a success
    that queues steps). ``others_succeeded``: a hint that every other step of the run succeeded."""
    run = changes.run
    revoke = apply_outcome(session, changes, definition, None, view, outcome, rand, prices, recorded_policy,
                           defer_move=True)
    if revoke is None:
        return None
    finished = others_succeeded and _finish_if_last(session, changes, definition, view, outcome)
    messages = None
    if dispatch and not finished:
        ready = _ready_to_queue(session, changes, definition, view)
        if ready and changes.unchanged_since is not None:
            return None  # more than one statement: record_outcome queues them under the run's lock
        messages = _queue(session, changes, definition, view, ready) if ready else None
    scheduler_has_work = not finished and messages is None
    if scheduler_has_work:
        changes.run_values["has_work"] = True
    if not repo.apply_run_changes(session, changes):
        if messages:
            # Cannot happen: the queueing statement checked the step's guard under the run's lock.
            raise repo.StaleRunState(f"step {view.step_id} of run {run.id} moved under its run's lock")
        return None
    return Recorded(True, revoke, scheduler_has_work=scheduler_has_work, messages=messages or [])


# Deciding which steps a success made ready reads the other needs of the steps that need it; past
# this many (a wide join) the scheduler decides, once for many reports, instead of every report.
QUEUE_READY_MAX_READS = 32


def _ready_to_queue(session: Session, changes: RunChanges, definition: Definition, view: StepView) -> list[str]:
    """The worker steps the success of ``view`` made ready, for the outcome's transaction to queue:
    the scheduler's dispatch (DESIGN.md, the journey's first step) without the doorbell and a pass in
    between. None are left to the scheduler when the run is not plainly running, a step to start
    waits in the database (approval, question, event, timer) or deciding would read too many steps;
    none may be ready, and then the run's status may change (all that is left may be waiting)."""
    run, step_id = changes.run, view.step_id
    if changes.run_target is not None or run.status != RunStatus.RUNNING or view.status is not StepStatus.SUCCEEDED:
        return []
    dependents = definition.dependents[step_id]
    if not dependents or any(definition.step(d).type in dag.WAITING_TYPES for d in dependents):
        return []
    needs = definition.needs
    others = sorted({n for d in dependents for n in needs[d]} - {step_id})
    if len(others) > QUEUE_READY_MAX_READS:
        return []
    statuses = repo.step_statuses(session, run.id, others) if others else {}
    return [d for d in dependents if all(statuses.get(n) is StepStatus.SUCCEEDED for n in needs[d] if n != step_id)]


def _queue(session: Session, changes: RunChanges, definition: Definition, view: StepView,
           ready: list[str]) -> list[StepMessage] | None:
    """Queue ``ready`` with their outbox rows and ``step_queued`` events; their messages, or None if
    none was queued (the scheduler then looks at the run)."""
    messages = repo.queue_steps_with_outbox(
        session, changes.run.id, {d: definition.timeout_s(definition.step(d)) for d in ready}, view.step_id,
        view.attempt,
    )
    for message in messages:
        changes.event("step_queued", message.step_id, message.attempt)
    return messages or None


def _finish_if_last(session: Session, changes: RunChanges, definition: Definition, view: StepView,
                    outcome: Outcome) -> bool:
    """If the step that just succeeded was the run's last, the run succeeds here (as fail-fast fails it
    here) and the scheduler has nothing to do for it. Called on a hint that it may be (every other
    step succeeded, in a snapshot older than the lock), so a fresh read decides, unless there is no
    other step."""
    run = changes.run
    if not (changes.run_target is None and run.status == RunStatus.RUNNING
            and view.status is StepStatus.SUCCEEDED):
        return False
    outputs = ({} if len(definition.steps) == 1
               else repo.outputs_if_others_succeeded(session, run.id, view.step_id, definition.sinks))
    if outputs is None:
        return False
    if view.step_id in definition.sinks:
        outputs[view.step_id] = outcome.output
    succeed_run(changes, {s: outputs.get(s) for s in definition.sinks})
    return True


def apply_outcome(
    session: Session,
    changes: RunChanges,
    definition: Definition,
    views: list[StepView] | None,
    view: StepView,
    outcome: Outcome,
    rand: Callable[[], float] = random.random,
    prices: PriceTable | None = None,
    recorded_policy: list[dict[str, Any]] | None = None,
    defer_move: bool = False,
) -> list[str] | None:
    """Apply an outcome to a running or waiting step (its run locked by the caller).

    ``views`` are all the run's steps, or None to read them only if fail-fast needs them;
    ``recorded_policy`` the step's policy decisions so far, which the outcome's are appended to.

    Retries are decided by the pure policy; a step failing for good fails the run (fail-fast). In a
    run that already ended (a graceful cancel lets steps finish) the step's result is recorded and
    nothing else happens. With ``prices``, the outcome's usage is priced in credits (the per-step
    price only when the step finished). Returns the task ids to revoke, or None if the step was not
    at that attempt.

    With ``defer_move``, a move that is the outcome's only write besides the run's (to succeeded,
    retrying or cancelled) is left in ``changes.step_move`` for apply_run_changes, which writes it
    first, and the rest only if it matched; the caller must apply ``changes`` and check its result.
    """
    run_id, attempt = changes.run.id, view.attempt
    run_ended = changes.run.status in TERMINAL_RUN
    model = getattr(definition.step(view.step_id), "model", None)

    def usage(step_done: bool) -> dict[str, float]:
        if prices is None:
            return dict(outcome.usage)
        return {**outcome.usage, "credits": metering.credits(prices, outcome.usage, model, step_done)}

    def move(target: StepStatus, **values: Any) -> bool:
        if outcome.policy:
            values["policy"] = [*(recorded_policy or []), *outcome.policy]
        if defer_move and target in _DEFERRABLE_MOVES:
            changes.step_move = repo.StepMove(view.step_id, target, frozenset([view.status]), attempt, values)
            moved = True
        else:
            moved = repo.update_steps(
                session, run_id, [view.step_id], target, only_from=[view.status], at_attempt=attempt, **values
            )
        if moved:
            view.status = target
            # Only a report that moved the step leaves its policy decisions: a stale one changes nothing.
            if outcome.policy:
                _record_policy(changes, view, outcome.policy)
        return bool(moved)

    finished = dict(completed_at=repo.NOW, lease_expires_at=None, due_at=None)
    if outcome.suspend is not None:
        suspension = outcome.suspend
        if not move(StepStatus.WAITING, checkpoint=suspension.checkpoint, lease_expires_at=None,
                    waiting_on=suspension.kind):
            return None
        _suspend(session, changes, view, attempt, suspension)
        _add_usage(changes, usage(False), step_done=False)
        return []
    if outcome.succeeded:
        done = usage(True)
        if not move(StepStatus.SUCCEEDED, output=outcome.output, usage=done if outcome.usage or prices else None,
                    error=None, **finished):
            return None
        changes.event("step_completed", view.step_id, attempt, output=outcome.output)
        _add_usage(changes, done)
        return []
    error = outcome.error
    if outcome.cancelled:
        if not move(StepStatus.CANCELLED, error=error.as_json(), **finished):
            return None
        changes.event("step_cancelled", view.step_id, attempt, reason="run_stopped")
        # What a stopped attempt used before it stopped was still spent.
        _add_usage(changes, usage(False), step_done=False)
        return []
    # A reopened step gets a fresh budget (its row's max_attempts moved up) while attempt numbers, and
    # so Celery task ids, keep growing: decide on the attempt's place within the current budget.
    policy = definition.retry_policy(definition.step(view.step_id))
    attempt_in_budget = attempt - (view.max_attempts - policy.max_attempts)
    decision = retry.decide(policy, attempt_in_budget, error.retryable and not run_ended, rand)
    if decision.retry:
        if not move(StepStatus.RETRYING, error=error.as_json(), due_at=db_now(decision.delay_s), lease_expires_at=None):
            return None
        changes.event(
            "step_retrying", view.step_id, attempt,
            error=error.as_json(), delay_s=round(decision.delay_s, 3), next_attempt=attempt + 1,
        )
        _add_usage(changes, usage(False), step_done=False)
        return []
    if not move(StepStatus.FAILED, error=error.as_json(), **finished):
        return None
    changes.event("step_failed", view.step_id, attempt, error=error.as_json())
    _add_usage(changes, usage(True))
    if run_ended:
        return []
    if views is None:
        views = repo.steps_for_update(session, [run_id])[run_id]
    return fail_run(session, changes, views, view.step_id, error)


def succeed_run(changes: RunChanges, outputs: dict[str, Any] | None = None) -> None:
    """The run succeeded (every step did); ``outputs``: its sink steps' outputs, if already read."""
    changes.run_target = RunStatus.SUCCEEDED
    changes.run_values.update(completed_at=repo.NOW, waiting_on=None, has_work=False)
    if outputs is not None:
        changes.run_values["output"] = outputs
    changes.event("run_succeeded")


# The moves after which apply_outcome writes nothing of its own (a failed step may fail its run, a
# waiting one opens a question or an approval): they can wait for the run's statement.
_DEFERRABLE_MOVES = (StepStatus.SUCCEEDED, StepStatus.RETRYING, StepStatus.CANCELLED)


def fail_run(
    session: Session, changes: RunChanges, views: list[StepView], failed_step: str, error: ErrorInfo
) -> list[str]:
    """Fail-fast: the run fails, in-flight steps are cancelled, never-started ones skipped (blocked)."""
    run_id = changes.run.id
    before = {v.step_id: v for v in views}
    plan = dag.fail_fast(failed_step, {s: v.status for s, v in before.items()})
    stopped = {"code": "run_stopped", "message": f"run failed at step {failed_step!r}", "retryable": False}
    cancelled = repo.update_steps(
        session, run_id, plan.cancel, StepStatus.CANCELLED,
        cancel_requested=True, error=stopped, completed_at=repo.NOW, lease_expires_at=None, due_at=None,
    )
    revoke = []
    for step_id in cancelled:
        row = before[step_id]
        changes.event("step_cancelled", step_id, row.attempt, reason="run_stopped")
        if row.status in (StepStatus.QUEUED, StepStatus.RUNNING):
            revoke.append(task_id(run_id, step_id, row.attempt))
        row.status = StepStatus.CANCELLED
    skipped = repo.update_steps(
        session, run_id, plan.skip, StepStatus.SKIPPED, skipped_reason="blocked", completed_at=repo.NOW
    )
    for step_id in skipped:
        changes.event("step_completed", step_id, None, skipped=True, reason="blocked")
        before[step_id].status = StepStatus.SKIPPED
    repo.close_open_requests(session, run_id)
    changes.run_target = RunStatus.FAILED
    changes.run_values.update(
        error={"code": error.code, "message": error.message, "step_id": failed_step},
        completed_at=repo.NOW, waiting_on=None,
    )
    changes.event("run_failed", failed_step, None, error={"code": error.code, "message": error.message})
    return revoke


def _suspend(session: Session, changes: RunChanges, view: StepView, attempt: int, suspension: Suspension) -> None:
    """What a suspended step waits on: a question or an approval in the inbox, or a paused run."""
    run = changes.run
    if suspension.kind == "budget":
        # Paused before the call, not failed: an operator raises the budget (resume) or cancels.
        if changes.run_target not in TERMINAL_RUN and run.status != RunStatus.PAUSED:
            changes.run_target = RunStatus.PAUSED
        changes.event("step_waiting", view.step_id, attempt, waiting_on="budget", reason=suspension.text)
        changes.event("run_paused", view.step_id, attempt, reason="budget_exceeded", detail=suspension.text)
        return
    if suspension.kind == "approval":
        approval_id = repo.insert_approval(session, run.tenant_id, run.id, view.step_id, suspension.text[:2000],
                                           call=suspension.call)
        changes.event("step_waiting", view.step_id, attempt, waiting_on="approval", approval_id=approval_id,
                      call=suspension.call)
        return
    question_id = repo.insert_question(session, run.tenant_id, run.id, view.step_id, suspension.text)
    changes.event("step_waiting", view.step_id, attempt, waiting_on="question", question_id=question_id)


def _record_policy(changes: RunChanges, view: StepView, decisions: list[dict[str, Any]]) -> None:
    """One event per policy decision of the attempt (the step's row keeps them too), and the run's
    raised risk level."""
    for decision in decisions:
        changes.event("policy_decision", view.step_id, view.attempt, **decision)
    current = changes.run_values.get("risk_level", changes.run.risk_level)
    risk = policy.highest_risk([current, *(d.get("risk") for d in decisions)])
    if risk != current:
        changes.run_values["risk_level"] = risk


def _add_usage(changes: RunChanges, usage: dict[str, float], step_done: bool = True) -> None:
    """Roll a step attempt's usage up into the run's; ``steps`` counts steps that finished."""
    total = dict(changes.run_values.get("usage") or changes.run.usage or empty_usage())
    for key in USAGE_KEYS:
        total[key] = total.get(key, 0) + usage.get(key, 0)
    total["steps"] = total.get("steps", 0) + int(step_done)
    total["credits"] = round(total["credits"], metering.PRECISION)
    changes.run_values["usage"] = total


def reopen_steps(
    session: Session, run_id: str, definition: Definition, views: list[StepView], step_ids: list[str]
) -> list[str]:
    """Put finished or waiting steps back to `pending` to run again, each with a fresh retry budget.

    Attempt numbers keep counting, so a new attempt never reuses an old Celery task id (which a
    worker may still hold as revoked).
    """
    reopened = []
    for view in views:
        if view.step_id not in step_ids:
            continue
        budget = definition.retry_policy(definition.step(view.step_id)).max_attempts
        reopened += repo.update_steps(
            session, run_id, [view.step_id], StepStatus.PENDING,
            max_attempts=view.attempt + budget, error=None, output=None, skipped_reason=None,
            cancel_requested=False, worker=None, queued_at=None, started_at=None, completed_at=None,
            due_at=None, lease_expires_at=None, checkpoint=None, correlation_key=None, waiting_on=None,
        )
    return reopened
