"""A worker's side of an attempt, at the edge: claiming it, and recording its outcome.

Recording reads the snapshot the decision needs (its step, the steps its success may make ready and
their other needs (core.outcome.ready_reads), every step if it fails the run (core.outcome.
will_fail_for_good)), lets the pure core decide (core.outcome.on_report), and hands the transition to
the one writer.
The worker tries the snapshot its claim left first (written in one statement if the run is unchanged
since); otherwise, or if it was stale, the run is locked and read again.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from orchestrator import policy, writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import controls as decide_controls
from orchestrator.core import items
from orchestrator.core import outcome as decide
from orchestrator.core.inputs import AttemptReport, Defer, Env
from orchestrator.core.reports import WORKER_LOST, ErrorInfo, Outcome, Suspension, empty_usage
from orchestrator.core.snapshot import RunState
from orchestrator.db import repository as repo
from orchestrator.definitions import Definition
from orchestrator.policy import Limits
from orchestrator.states import RunStatus, StepStatus

log = logging.getLogger(__name__)

__all__ = ["WORKER_LOST", "AttemptKey", "Claim", "ErrorInfo", "Outcome", "Suspension", "claim_attempt", "claim_of",
           "defer_attempt", "empty_usage", "record", "record_as_claimed", "record_outcome"]


@dataclass(frozen=True)
class AttemptKey:
    """One attempt of one step of one run: what a step's message names."""

    run_id: str
    step_id: str
    attempt: int


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
    # The run and step as the claim left them (not locked), for record_as_claimed (PostgreSQL only).
    seen: RunState | None = None
    # A for-each item's index and value (its templates' ``index`` and ``item``); None for a step.
    item_index: int | None = None
    item: Any = None


def effective_limits(definition: Definition, raised: dict[str, Any] | None, tenant: policy.Policy | None) -> Limits:
    """The definition's limits with an operator's raised ones over them, capped by the tenant's."""
    return policy.combined_limits(definition.policy.limits.model_copy(update=raised or {}),
                                  tenant.limits if tenant is not None else None)


def claim_attempt(session: Session, catalog: DefinitionCatalog, key: AttemptKey, *, worker: str,
                  lease_s: float, outbox_id: int | None = None) -> Claim | None:
    """queued -> running for exactly this attempt, with a lease; None if the message is stale or a
    duplicate, or if its run is paused (see defer_attempt).

    One statement on PostgreSQL, so ``session`` may be in autocommit (the worker's is: two round trips
    fewer); what is read after it (definition, outputs, approval) needs no lock.
    """
    found = repo.lock_run_and_claim(session, key.run_id, key.step_id, key.attempt, worker=worker, lease_s=lease_s,
                                    outbox_id=outbox_id)
    if found is None or not found.claimed:
        return None
    return claim_of(session, catalog, key, found)


def claim_of(session: Session, catalog: DefinitionCatalog, key: AttemptKey, found: repo.Claimed) -> Claim:
    """The Claim of an attempt claimed (``found``: by claim_attempt, or by the outcome that queued it,
    writer.ClaimNext), with what its templates read: the definition (cached), the other steps' outputs
    and the latest approval if they use them (read now, no lock needed)."""
    run = found.run
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    tenant = policy.Policy.model_validate(run.tenant_policy) if run.tenant_policy else None
    # Read the other steps' outputs and the latest approval only if the step's templates use them:
    # most steps' arguments are plain values, and these reads grow with the run.
    names = definition.template_names(key.step_id)
    return Claim(
        run_id=key.run_id, step_id=key.step_id, attempt=key.attempt, tenant_id=run.tenant_id,
        workflow_id=run.workflow_id, run_input=run.input, run_attempt=run.attempt,
        outputs=repo.succeeded_outputs(session, key.run_id) if "steps" in names else {},
        definition=definition, checkpoint=found.checkpoint,
        approval=repo.latest_approval_decision(session, key.run_id) if "approval" in names else None,
        run_usage=dict(run.usage or {}), limits=effective_limits(definition, run.limits, tenant),
        tenant_policy=tenant, seen=found.seen, item_index=items.index_of(key.step_id), item=found.item_value,
    )


def defer_attempt(session: Session, key: AttemptKey) -> bool:
    """A message that arrived while its run is paused puts its step back to `pending` (the attempt is
    not spent), so resume dispatches it again; True if it did. Call it in a transaction when
    claim_attempt found nothing to claim."""
    run = repo.lock_run(session, key.run_id)
    if run is None or run.status != RunStatus.PAUSED:
        return False
    steps = repo.steps_for_update(session, [key.run_id])[key.run_id]
    if items.parent_of(key.step_id) is not None:  # an item: not among the steps read for a pass
        steps += repo.steps_of(session, key.run_id, [key.step_id])
    state = RunState.from_row(run, steps)
    return writer.apply(session, decide_controls.on_defer(state, Defer(key.step_id, key.attempt))).applied


class WorkerSessions(Protocol):
    """Where a worker writes: one statement in autocommit (PostgreSQL), or a transaction."""

    def one_statement(self) -> AbstractContextManager[Session]: ...

    def transaction(self) -> AbstractContextManager[Session]: ...


def record(sessions: WorkerSessions, definition: Definition, report: AttemptReport, *,
           seen: RunState | None, env: Env, claim_next: writer.ClaimNext | None = None) -> writer.Written:
    """Write a worker's report of one attempt; a stale or duplicate report changes nothing. From the
    snapshot its claim left (``seen``) in one statement if the decision allows it and the run did not
    change since; otherwise under the run's lock. ``claim_next``: the worker runs the one next step
    this queues on its queue itself, claimed with the outcome (``Written.claimed``) where it can be."""
    if seen is not None and _decidable_as_claimed(definition, report):
        with sessions.one_statement() as session:
            written = record_as_claimed(session, definition, seen, report, env)
        if written.applied:
            return written
    try:
        with sessions.transaction() as session:
            return record_outcome(session, definition, report, env, together=True, claim_next=claim_next)
    except writer.NotAsDecided as exc:
        log.info("an outcome's queued steps were not as decided (%s); writing it again step by step", exc)
    with sessions.transaction() as session:
        return record_outcome(session, definition, report, env)


def record_as_claimed(session: Session, definition: Definition, seen: RunState, report: AttemptReport,
                      env: Env) -> writer.Written:
    """Write a success from what the claim left (``seen``) in one statement, without reading or
    locking the run first, if the run's last_seq shows nothing happened to it since: on PostgreSQL,
    a run's last step or a step whose success queues nothing. Meant for a session in autocommit: it
    saves BEGIN, the locking read and COMMIT. STALE (nothing written) otherwise."""
    if not _decidable_as_claimed(definition, report) or session.get_bind().dialect.name != "postgresql":
        return writer.STALE
    state = seen
    # Only a step that no other step needs can be the run's last to succeed.
    if len(definition.steps) > 1 and not definition.dependents[report.step_id]:
        outputs = repo.outputs_if_others_succeeded(session, seen.id, report.step_id, definition.sinks)
        state = seen.replace(others_succeeded=outputs is not None, outputs=outputs or {})
    return writer.apply(session, decide.on_report(state, definition, report, env))


def _decidable_as_claimed(definition: Definition, report: AttemptReport) -> bool:
    """Whether what the claim left (the run and the step) is enough to decide the report: a success
    that queues nothing (the steps it makes ready are read under the run's lock)."""
    if items.parent_of(report.step_id) is not None:
        return False  # an item's outcome is counted on its step, read under the lock
    return report.outcome.succeeded and not (report.queue_ready and definition.dependents[report.step_id])


def record_outcome(session: Session, definition: Definition, report: AttemptReport, env: Env, *,
                   together: bool = False, claim_next: writer.ClaimNext | None = None) -> writer.Written:
    """Write a worker's report of one attempt under its run's lock, in the caller's transaction
    (``together``, ``claim_next``: see writer.apply)."""
    state = _locked_snapshot(session, definition, report)
    if state is None:
        return writer.STALE
    return writer.apply(session, decide.on_report(state, definition, report, env), together=together,
                        claim_next=claim_next)


def _locked_snapshot(session: Session, definition: Definition, report: AttemptReport) -> RunState | None:
    """The run, locked, with what deciding the report needs: its step and the steps that need it (read
    with the lock), every step if it fails the run, and for a success, fresh under the lock, whether
    every other step succeeded (with the run's output) and the other needs of the steps it may make
    ready. None if the step is not running at the report's attempt."""
    if items.parent_of(report.step_id) is not None:
        return _locked_item_snapshot(session, report)
    reads = (decide.ready_reads(definition, report.step_id)
             if report.queue_ready and report.outcome.succeeded else None)
    wanted = [report.step_id, *(definition.dependents[report.step_id] if reads is not None else ())]
    found = repo.lock_run_with_steps(session, report.run_id, wanted)
    if found is None:
        return None
    run, steps, others_succeeded = found
    step = next((s for s in steps if s.step_id == report.step_id), None)
    if step is None or step.status is not StepStatus.RUNNING or step.attempt != report.attempt:
        return None
    state = RunState.from_row(run, steps, complete=len(steps) == len(definition.steps))
    if decide.will_fail_for_good(definition, step, report.outcome, state.status):
        everything = repo.steps_for_update(session, [run.id])[run.id]
        return state.with_steps(everything).replace(complete=True)
    if not report.outcome.succeeded or state.status is not RunStatus.RUNNING:
        return state
    if len(definition.steps) == 1:
        state = state.replace(others_succeeded=True)
    elif others_succeeded:  # a hint (read before the lock): a fresh read decides
        outputs = repo.outputs_if_others_succeeded(session, run.id, report.step_id, definition.sinks)
        state = state.replace(others_succeeded=outputs is not None, outputs=outputs or {})
    if reads:
        state = state.with_steps(repo.steps_of(session, run.id, reads))
    return state


def _locked_item_snapshot(session: Session, report: AttemptReport) -> RunState | None:
    """The run, locked, with a for-each item and its step; with every step if the item did not
    succeed (its step may fail, and fail its run). None if the item is not running at that attempt."""
    found = repo.lock_run_with_steps(session, report.run_id, [report.step_id])
    if found is None:
        return None
    run, (item, *_), _ = found
    if item.status is not StepStatus.RUNNING or item.attempt != report.attempt:
        return None
    # The step's counts are read after the lock is held: the locking statement's own read of them may
    # predate an outcome of another item committed while it waited (and its counts would be lost).
    state = RunState.from_row(run, [item, *repo.steps_of(session, run.id, [items.parent_of(report.step_id)])],
                              complete=False)
    if report.outcome.succeeded:
        return state
    return state.with_steps(repo.steps_for_update(session, [run.id])[run.id]).replace(complete=True)
