"""The one Celery task: claim an attempt, run its executor, hand the outcome to the outcome writer.

Exceptions become outcomes here and only here (STYLE.md: the worker maps an exception to an
outcome in exactly one place).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from orchestrator import broker, outcomes, redact, templates
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.errors import StepError
from orchestrator.outcomes import ErrorInfo, Outcome, Suspension
from orchestrator.settings import Settings
from workers import executors
from workers.context import StepContext, Suspend

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Per-process resources: a database engine must not cross a fork, so each child builds its own."""

    settings: Settings
    celery: Celery
    pid: int

    def __post_init__(self):
        self.sessions = make_sessionmaker(make_engine(self.settings))
        self.catalog = DefinitionCatalog()
        self.doorbell = broker.Doorbell(self.celery, self.settings.wake_queue)


_runtimes: dict[int, Runtime] = {}


def _runtime(settings: Settings, celery: Celery) -> Runtime:
    pid = os.getpid()
    if pid not in _runtimes:
        _runtimes.clear()  # a forked child must not reuse its parent's connections
        _runtimes[pid] = Runtime(settings, celery, pid)
    return _runtimes[pid]


def register(app: Celery, settings: Settings) -> None:
    @app.task(name=broker.RUN_STEP_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)
    def run_step(task, run_id: str, step_id: str, attempt: int) -> None:
        worker = f"{task.request.hostname or 'worker'}:{os.getpid()}"
        execute_attempt(_runtime(settings, app), run_id, step_id, attempt, worker)


def execute_attempt(rt: Runtime, run_id: str, step_id: str, attempt: int, worker: str) -> None:
    """Run one delivered attempt end to end; a stale or duplicate delivery does nothing."""
    settings = rt.settings
    with transaction(rt.sessions) as session:
        claim = outcomes.claim_attempt(session, rt.catalog, run_id, step_id, attempt, worker, settings.lease_s)
    if claim is None:
        log.info("dropped stale delivery", extra={"run_id": run_id, "step_id": step_id, "attempt": attempt})
        return
    step = claim.definition.step(step_id)
    ctx = StepContext(
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        step=step,
        template_context=templates.run_context(
            claim.run_input, claim.outputs,
            {"id": run_id, "attempt": claim.run_attempt, "workflow_id": claim.workflow_id},
            claim.approval, attempt,
        ),
        checkpoint=claim.checkpoint,
        settings=settings,
        deadline=time.monotonic() + claim.definition.timeout_s(step),
    )
    heartbeat = _Heartbeat(rt, ctx)
    heartbeat.start()
    try:
        outcome = run_executor(ctx)
    finally:
        heartbeat.finish()
    with transaction(rt.sessions) as session:
        recorded = outcomes.record_outcome(session, rt.catalog, run_id, step_id, attempt, outcome)
    if not recorded.applied:
        log.info("outcome of a stopped attempt dropped", extra={"run_id": run_id, "step_id": step_id, "attempt": attempt})
        return
    rt.doorbell.ring(run_id)
    broker.revoke(rt.celery, recorded.revoke)


def run_executor(ctx: StepContext) -> Outcome:
    """The executor's result or exception, as an Outcome; an error's message never carries a secret
    of this process (a provider may echo its API key back in an error body)."""
    outcome = _outcome_of(ctx)
    if outcome.error is not None:
        scrubbed = redact.redact(outcome.error.message, redact.known_secrets(ctx.settings))
        outcome = dataclasses.replace(outcome, error=dataclasses.replace(outcome.error, message=scrubbed))
    return outcome


def _outcome_of(ctx: StepContext) -> Outcome:
    try:
        output = executors.execute(ctx)
        return Outcome(output=output, usage=ctx.usage)
    except Suspend as suspend:
        return Outcome(usage=ctx.usage, suspend=Suspension(suspend.question, suspend.checkpoint))
    except StepError as exc:
        return Outcome(error=ErrorInfo.of(exc), usage=ctx.usage)
    except SoftTimeLimitExceeded:
        return Outcome(error=ErrorInfo("timeout", "the step ran past its timeout_s", True), usage=ctx.usage)
    except Exception as exc:  # noqa: BLE001 - any bug in a tool is that step's failure, not the worker's
        log.exception("step raised an unexpected error", extra={"run_id": ctx.run_id, "step_id": ctx.step_id})
        return Outcome(error=ErrorInfo("step_error", f"{type(exc).__name__}: {exc}", True), usage=ctx.usage)


class _Heartbeat(threading.Thread):
    """Extends the attempt's lease; sets the stop flag on cancellation or when the deadline passes."""

    def __init__(self, rt: Runtime, ctx: StepContext):
        super().__init__(name=f"heartbeat-{ctx.step_id}", daemon=True)
        self.rt, self.ctx = rt, ctx
        self.done = threading.Event()
        self.interval = min(rt.settings.lease_s / 3, 1.0)

    def run(self) -> None:
        ctx = self.ctx
        while not self.done.wait(self._next_wait()):
            if time.monotonic() >= ctx.deadline:
                ctx.stop.set()
            try:
                with transaction(self.rt.sessions) as session:
                    alive = repo.extend_lease(session, ctx.run_id, ctx.step_id, ctx.attempt, self.rt.settings.lease_s)
            except Exception as exc:  # noqa: BLE001 - the database may be back by the next beat
                log.warning("heartbeat failed: %s", exc)
                continue
            if not alive:
                ctx.stop.set()

    def _next_wait(self) -> float:
        if self.ctx.stop.is_set():
            return self.interval
        return min(self.interval, max(self.ctx.deadline - time.monotonic(), 0.0))

    def finish(self) -> None:
        self.done.set()
