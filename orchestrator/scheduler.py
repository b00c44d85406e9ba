"""The scheduler: claims runs that have work, advances them, publishes what they need.

Woken by the doorbell (a message on its own queue) or by the next due time; a slow sweep flags
runs with due retries or expired leases and re-publishes outbox rows left unsent. Several
schedulers may run: runs are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import broker, dag, logs, templates
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.db.models import Step
from orchestrator.db.repository import RunChanges, StepView
from orchestrator.db.session import database_unavailable, transaction
from orchestrator.db.types import db_now
from orchestrator.definitions import ApprovalStep, Definition, QuestionStep, TimerStep, WaitEventStep
from orchestrator.errors import StepError
from orchestrator.outcomes import WORKER_LOST, ErrorInfo, Outcome, apply_outcome
from orchestrator.settings import Settings
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """What one pass over a batch of runs decided: messages to publish and tasks to revoke."""

    messages: list[dict] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)


def advance_run(session: Session, run, views: list[StepView], definition: Definition, out: Pass) -> None:
    """Advance one locked run as far as the database state allows, in the caller's transaction."""
    changes = RunChanges(run)
    changes.run_values["has_work"] = False
    status = RunStatus(run.status)
    if status in TERMINAL_RUN:
        repo.apply_run_changes(session, changes)
        return
    if status is RunStatus.QUEUED:
        changes.run_target = status = RunStatus.RUNNING
        changes.run_values["started_at"] = db_now()
        changes.event("run_started")
    for view in views:
        if view.status is StepStatus.RUNNING and view.lease_expired:
            revoke = apply_outcome(session, changes, definition, views, view, WORKER_LOST)
            out.revoke += revoke or []
            if changes.run_target is RunStatus.FAILED:
                repo.apply_run_changes(session, changes)
                return
    if status is RunStatus.PAUSED:
        repo.apply_run_changes(session, changes)
        return
    _fire_due(session, changes, views, definition, out)
    if changes.run_target is RunStatus.FAILED:
        repo.apply_run_changes(session, changes)
        return
    while True:
        decision = dag.advance(
            definition.needs, {v.step_id: v.status for v in views}, {v.step_id: v.type for v in views},
            {v.step_id: v.waiting_on for v in views if v.waiting_on},
        )
        _dispatch(session, changes, views, definition, decision.dispatch, out)
        _park(session, changes, views, definition, decision.park, out)
        if changes.run_target is RunStatus.FAILED:
            repo.apply_run_changes(session, changes)
            return
        # A parked step may have completed at once (an event kept from before it waited): go again.
        if all(v.status is StepStatus.WAITING for v in views if v.step_id in decision.park):
            break
    if decision.run_status is RunStatus.SUCCEEDED:
        outputs = repo.succeeded_outputs(session, run.id)
        sinks = dag.sink_steps([s.id for s in definition.steps], definition.needs)
        changes.run_target = RunStatus.SUCCEEDED
        changes.run_values.update(output={s: outputs.get(s) for s in sinks}, completed_at=db_now(), waiting_on=None)
        changes.event("run_succeeded")
    elif decision.run_status != status or (status is RunStatus.WAITING and decision.waiting_on != run.waiting_on):
        changes.run_target = decision.run_status
        changes.run_values["waiting_on"] = decision.waiting_on
        if decision.run_status is RunStatus.WAITING:
            changes.event("run_waiting", waiting_on=decision.waiting_on)
        else:
            changes.event("run_resumed" if status is RunStatus.WAITING else "run_running")
    repo.apply_run_changes(session, changes)


def _fire_due(session, changes: RunChanges, views: list[StepView], definition: Definition, out: Pass) -> None:
    """Retries whose backoff has passed are queued again; timers fire; event waits time out."""
    run_id = changes.run.id
    retry_ids = [v.step_id for v in views if v.status is StepStatus.RETRYING and v.due]
    for step_id in repo.update_steps(
        session, run_id, retry_ids, StepStatus.QUEUED,
        attempt=Step.attempt + 1, queued_at=db_now(), due_at=None,
    ):
        view = next(v for v in views if v.step_id == step_id)
        view.status, view.attempt = StepStatus.QUEUED, view.attempt + 1
        changes.event("step_queued", step_id, view.attempt)
        out.messages.append(_message(run_id, view, definition))
    for view in [v for v in views if v.status is StepStatus.WAITING and v.due]:
        if changes.run_target is RunStatus.FAILED:
            return
        if view.type == "timer":
            outcome = Outcome(output={"fired": True})
        elif view.type == "wait_event":
            outcome = Outcome(error=ErrorInfo("event_timeout", "no event arrived before timeout_s", False))
        else:
            continue
        out.revoke += apply_outcome(session, changes, definition, views, view, outcome) or []


def _dispatch(session, changes: RunChanges, views, definition: Definition, step_ids: list[str], out: Pass) -> None:
    run_id = changes.run.id
    for step_id in repo.update_steps(
        session, run_id, step_ids, StepStatus.QUEUED,
        only_from=[StepStatus.PENDING], attempt=Step.attempt + 1, queued_at=db_now(),
    ):
        view = next(v for v in views if v.step_id == step_id)
        view.status, view.attempt = StepStatus.QUEUED, view.attempt + 1
        changes.event("step_queued", step_id, view.attempt)
        out.messages.append(_message(run_id, view, definition))


def _park(session, changes: RunChanges, views, definition: Definition, step_ids: list[str], out: Pass) -> None:
    """Approval, question, event and timer steps wait in the database, holding no worker."""
    run = changes.run
    context = None
    for step_id in step_ids:
        step = definition.step(step_id)
        view = next(v for v in views if v.step_id == step_id)
        if step.type != "timer" and context is None:
            context = templates.run_context(
                run.input, repo.succeeded_outputs(session, run.id),
                {"id": run.id, "attempt": run.attempt, "workflow_id": run.workflow_id},
                repo.latest_approval_decision(session, run.id),
            )
        due, key, problem = None, None, None
        if isinstance(step, TimerStep):
            due = db_now(step.duration_s)
        elif isinstance(step, WaitEventStep):
            due = db_now(step.timeout_s) if step.timeout_s else None
            try:
                key = str(templates.render(step.correlation_key, context))[:200]
            except StepError as exc:
                problem = ErrorInfo.of(exc)
        if not repo.update_steps(
            session, run.id, [step_id], StepStatus.WAITING, only_from=[StepStatus.PENDING],
            attempt=1, queued_at=db_now(), started_at=db_now(), due_at=due, correlation_key=key,
        ):
            continue
        view.status, view.attempt = StepStatus.WAITING, 1
        extra = {}
        if isinstance(step, ApprovalStep):
            prompt = _render_text(step.prompt, context)
            extra["approval_id"] = repo.insert_approval(session, run.tenant_id, run.id, step_id, prompt)
        elif isinstance(step, QuestionStep):
            extra["question_id"] = repo.insert_question(
                session, run.tenant_id, run.id, step_id, _render_text(step.question, context) or "?"
            )
        elif key is not None:
            extra["correlation_key"] = key
        changes.event("step_waiting", step_id, 1, waiting_on=dag.waiting_on(step.type), **extra)
        if problem is not None:
            out.revoke += apply_outcome(session, changes, definition, views, view, Outcome(error=problem)) or []
        elif key is not None:
            kept = repo.kept_event(session, run.tenant_id, key, step.event_name)
            if kept is not None:
                delivered = Outcome(output={"event_id": kept.id, "name": kept.name, "payload": kept.payload})
                apply_outcome(session, changes, definition, views, view, delivered)


def _render_text(template: str | None, context: dict) -> str | None:
    if template is None:
        return None
    try:
        return str(templates.render(template, context))
    except StepError as exc:
        return f"{template} (template error: {exc.message})"


def _message(run_id: str, view: StepView, definition: Definition) -> dict:
    return {
        "run_id": run_id,
        "step_id": view.step_id,
        "attempt": view.attempt,
        "queue": view.queue,
        "soft_time_limit": definition.timeout_s(definition.step(view.step_id)),
    }


class Scheduler:
    """The scheduler process's loop, with every collaborator injected."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], celery, batch_size: int = 200):
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self.doorbell = broker.Doorbell(celery, settings.wake_queue)
        self.epoch = broker.BrokerEpoch(settings)
        self.catalog = DefinitionCatalog()
        self.batch_size = batch_size
        self.stopping = threading.Event()

    def advance_batch(self) -> int:
        """Advance up to batch_size runs with work in one transaction, then publish. Returns runs advanced.

        The batch is first tried without a savepoint per run (two round trips fewer per run) and with
        the events of all its runs inserted in one statement at the end; if any
        run raises, that transaction is rolled back whole and the batch is done again with each run in
        a savepoint of its own, so the run that trips a bug is set aside and the others advance.
        """
        try:
            out, advanced, outbox_ids = self._advance_locked(isolated=False)
        except Exception as exc:  # noqa: BLE001 - redone run by run below; an outage goes up
            if isinstance(exc, DBAPIError) and database_unavailable(exc):
                raise
            log.info("a batch raised (%s: %s); advancing it again, one savepoint per run", type(exc).__name__, exc)
            out, advanced, outbox_ids = self._advance_locked(isolated=True)
        self._publish(out.messages, outbox_ids)
        broker.revoke(self.celery, out.revoke)
        return advanced

    def _advance_locked(self, isolated: bool) -> tuple[Pass, int, list[int]]:
        out = Pass()
        with transaction(self.sessions) as session:
            runs = repo.lock_runs_with_work(session, self.batch_size)
            if not runs:
                return out, 0, []
            views = repo.steps_for_update(session, [r.id for r in runs])
            definitions = self.catalog.get_many(
                session, [(r.tenant_id, r.workflow_id, r.workflow_version) for r in runs]
            )
            if not isolated:
                repo.defer_events(session)
            for run in runs:
                key = (run.tenant_id, run.workflow_id, run.workflow_version)
                with logs.bound(run_id=run.id, tenant=run.tenant_id):
                    if isolated:
                        self._advance_one(session, run, views[run.id], definitions[key], out)
                    else:
                        advance_run(session, run, views[run.id], definitions[key], out)
            repo.flush_events(session)
            outbox_ids = repo.insert_outbox(session, out.messages)
        return out, len(runs), outbox_ids

    def _advance_one(self, session: Session, run, views: list[StepView], definition: Definition, out: Pass) -> None:
        """Advance one run in a savepoint: a run that trips a bug is set aside (logged, with an event)
        instead of failing the batch again and again and stalling every other run."""
        mine = Pass()
        try:
            with session.begin_nested():
                advance_run(session, run, views, definition, mine)
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
            log.exception("advancing run %s failed; it is set aside until an operator acts on it", run.id)
            with session.begin_nested():
                changes = RunChanges(run, run_values={"has_work": False})
                changes.event("scheduler_error", error=f"{type(exc).__name__}: {exc}"[:2000])
                repo.apply_run_changes(session, changes)
            return
        out.messages += mine.messages
        out.revoke += mine.revoke

    def _publish(self, messages: list[dict], outbox_ids: list[int]) -> None:
        if not messages:
            return
        try:
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)
        except Exception as exc:  # noqa: BLE001 - the outbox keeps them; the sweep re-publishes
            log.warning("publishing %d step messages failed (%s); the sweep will retry", len(messages), exc)
            return
        with transaction(self.sessions) as session:
            repo.delete_outbox(session, outbox_ids)

    def sweep(self) -> None:
        """The safety net: flag due and lost work, re-publish what was committed but never sent, and
        every queued step if the broker lost its messages."""
        if self.epoch.lost():
            self._republish_queued()
        with transaction(self.sessions) as session:
            flagged = repo.flag_runs_with_due_steps(session)
            stale = repo.stale_outbox(session, self.settings.outbox_republish_after_s)
            messages = [
                dict(run_id=m.run_id, step_id=m.step_id, attempt=m.attempt, queue=m.queue,
                     soft_time_limit=m.soft_time_limit)
                for m in stale
            ]
            stale_ids = [m.id for m in stale]
        if flagged:
            log.info("sweep flagged %d runs with due or lost steps", flagged)
        if messages:
            log.warning("re-publishing %d step messages left in the outbox", len(messages))
            self._publish(messages, stale_ids)

    def _republish_queued(self) -> None:
        """Publish every `queued` step's message again; a copy that did survive is dropped by the
        workers' claim guard, so duplicates cost a little and lose nothing."""
        with transaction(self.sessions) as session:
            rows = repo.queued_steps(session)
            definitions = self.catalog.get_many(
                session, list({(r.tenant_id, r.workflow_id, r.workflow_version) for r in rows})
            )
        messages = []
        for r in rows:
            definition = definitions[(r.tenant_id, r.workflow_id, r.workflow_version)]
            messages.append(dict(run_id=r.run_id, step_id=r.step_id, attempt=r.attempt, queue=r.queue,
                                 soft_time_limit=definition.timeout_s(definition.step(r.step_id))))
        if messages:
            log.warning("the broker lost its messages (restart or flush): re-publishing %d queued steps",
                        len(messages))
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)
        self.epoch.mark()

    def drain(self) -> int:
        """Advance batches until no run has work left. Returns runs advanced."""
        total = 0
        while not self.stopping.is_set():
            advanced = self.advance_batch()
            total += advanced
            if advanced < self.batch_size:
                return total
        return total

    def wait_timeout(self) -> float:
        with transaction(self.sessions) as session:
            until_due = repo.seconds_until_next_due(session)
        if until_due is None:
            return self.settings.sweep_interval_s
        return max(0.0, min(until_due + 0.01, self.settings.sweep_interval_s))

    def run_forever(self) -> None:
        """Loop until stop(): sweep, drain, sleep until a ring or the next due time.

        Any failure (the database or the broker going away) drops the broker connection and starts
        over after a second, so the scheduler heals by itself once the service is back.
        """
        log.info("scheduler started (sweep every %.1fs)", self.settings.sweep_interval_s)
        while not self.stopping.is_set():
            try:
                with self.doorbell.listening(self.settings.sweep_interval_s) as wait_for_ring:
                    self._loop(wait_for_ring)
            except Exception:  # noqa: BLE001 - a passing outage must not end the scheduler
                log.exception("scheduler pass failed; reconnecting in 1s")
                self.stopping.wait(1.0)

    def _loop(self, wait_for_ring) -> None:
        next_sweep = 0.0
        while not self.stopping.is_set():
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
            self.drain()
            timeout = min(self.wait_timeout(), max(next_sweep - time.monotonic(), 0.0))
            wait_for_ring(timeout)

    def stop(self, *_args) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

