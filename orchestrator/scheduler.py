"""The scheduler: claims runs that have work, advances them, publishes what they need.

Woken by the doorbell (a message on its own queue) or by the next due time (then the pass flags
the runs whose retries or timers are due); a slow sweep flags runs with due retries or expired
leases and re-publishes outbox rows left unsent. Several schedulers may run: runs are claimed with
``FOR UPDATE SKIP LOCKED``.
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
from orchestrator.db.repository import RunChanges, StepView
from orchestrator.db.session import database_unavailable, transaction
from orchestrator.db.types import db_now
from orchestrator.definitions import ApprovalStep, Definition, QuestionStep, TimerStep, WaitEventStep
from orchestrator.errors import StepError
from orchestrator.messages import StepMessage
from orchestrator.outcomes import WORKER_LOST, ErrorInfo, Outcome, apply_outcome, succeed_run
from orchestrator.settings import Settings
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus, step_allowed_from

log = logging.getLogger(__name__)

# How long an idle scheduler waits for a ring before it deletes the outbox rows it published.
IDLE_CLEANUP_S = 0.2


@dataclass
class Pass:
    """What one pass over a batch of runs decided: messages to publish and tasks to revoke."""

    messages: list[StepMessage] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)


# Shared by every step a pass queues, so that PassWrites can write them all in one statement (it
# groups changes by the very expressions they set) and the statement is built once.
NEXT_ATTEMPT = repo.NEXT_ATTEMPT
NOW = repo.NOW


class PassWrites:
    """Where advance_run's guarded writes go.

    In a batch (``deferred``) the step moves and run changes of all its runs are kept and written
    together by flush(): a statement per kind of change, not per run. Which steps a guard lets move
    is predicted from the step views, read under the runs' locks (every writer of a step holds its
    run's lock), and flush() checks the prediction: a guard that matches nothing there raises
    StaleRunState, and the batch is redone run by run. For one run in its savepoint (not deferred)
    each write goes to the database at once, and a step whose guard fails is skipped.
    """

    def __init__(self, session: Session, deferred: bool):
        self.session, self.deferred = session, deferred
        self._moves: dict[tuple, tuple[StepStatus, list[StepStatus] | None, dict, list[tuple[str, str]]]] = {}
        self._moving_runs: set[str] = set()
        self._runs: list[tuple[RunChanges, list[str] | None]] = []

    def move_steps(self, changes: RunChanges, views: list[StepView], step_ids: list[str], target: StepStatus,
                   only_from: list[StepStatus] | None = None, **values) -> list[str]:
        """Move the run's steps to ``target`` where the transition table allows it; the ids moved."""
        run_id = changes.run.id
        if not self.deferred:
            return repo.update_steps(self.session, run_id, step_ids, target, only_from=only_from, **values)
        allowed = step_allowed_from(target, only_from)
        statuses = {v.step_id: v.status for v in views}
        moved = [s for s in step_ids if statuses[s] in allowed]
        if moved:
            # Keyed by identity: the values of the first move of a kind stay referenced here, so an id
            # cannot be reused by another object while the key lives.
            key = (target, allowed, tuple(sorted((k, id(v)) for k, v in values.items())))
            self._moves.setdefault(key, (target, only_from, values, []))[3].extend((run_id, s) for s in moved)
            self._moving_runs.add(run_id)
        return moved

    def before_direct_writes(self, run_id: str) -> None:
        """Write the run's kept step moves: what comes next writes its steps itself and must see them."""
        if run_id in self._moving_runs:
            self._write_moves()

    def finish_run(self, changes: RunChanges, output_of: list[str] | None = None) -> None:
        """The run's changes are complete; ``output_of``: the run succeeded with these steps' outputs."""
        if self.deferred:
            self._runs.append((changes, output_of))
            return
        self._set_outputs([(changes, output_of)])
        repo.apply_run_changes(self.session, changes)

    def flush(self) -> None:
        """Write what was kept (deferred); raises StaleRunState if a guard matched nothing."""
        self._write_moves()
        runs, self._runs = self._runs, []
        self._set_outputs(runs)
        repo.apply_many_run_changes(self.session, [changes for changes, _ in runs])

    def _write_moves(self) -> None:
        moves, self._moves = self._moves, {}
        self._moving_runs.clear()
        for target, only_from, values, keys in moves.values():
            moved = repo.move_steps_many(self.session, keys, target, only_from=only_from, **values)
            if len(moved) != len(keys):
                raise repo.StaleRunState(
                    f"steps {sorted(set(keys) - moved)} changed under their runs' locks; cannot move them to {target}"
                )

    def _set_outputs(self, runs: list[tuple[RunChanges, list[str] | None]]) -> None:
        keys = [(changes.run.id, s) for changes, sinks in runs if sinks for s in sinks]
        if not keys:
            return
        outputs = repo.step_outputs(self.session, keys)
        for changes, sinks in runs:
            if sinks:
                changes.run_values["output"] = {s: outputs.get((changes.run.id, s)) for s in sinks}


def advance_run(session: Session, run, views: list[StepView], definition: Definition, out: Pass,
                writes: PassWrites) -> None:
    """Advance one locked run as far as the database state allows, in the caller's transaction."""
    changes = RunChanges(run)
    changes.run_values["has_work"] = False
    status = RunStatus(run.status)
    if status in TERMINAL_RUN:
        writes.finish_run(changes)
        return
    if status is RunStatus.QUEUED:
        changes.run_target = status = RunStatus.RUNNING
        changes.run_values["started_at"] = NOW
        changes.event("run_started")
    for view in views:
        if view.status is StepStatus.RUNNING and view.lease_expired:
            revoke = apply_outcome(session, changes, definition, views, view, WORKER_LOST)
            out.revoke += revoke or []
            if changes.run_target is RunStatus.FAILED:
                writes.finish_run(changes)
                return
    if status is RunStatus.PAUSED:
        writes.finish_run(changes)
        return
    _fire_due(session, changes, views, definition, out, writes)
    if changes.run_target is RunStatus.FAILED:
        writes.finish_run(changes)
        return
    needs = definition.needs
    types = {v.step_id: v.type for v in views}
    waits = {v.step_id: v.waiting_on for v in views if v.waiting_on}
    while True:
        decision = dag.advance(needs, {v.step_id: v.status for v in views}, types, waits)
        _dispatch(changes, views, definition, decision.dispatch, out, writes)
        if decision.park:
            writes.before_direct_writes(run.id)
            _park(session, changes, views, definition, decision.park, out)
        if changes.run_target is RunStatus.FAILED:
            writes.finish_run(changes)
            return
        # A parked step may have completed at once (an event kept from before it waited): go again.
        if all(v.status is StepStatus.WAITING for v in views if v.step_id in decision.park):
            break
    if decision.run_status is RunStatus.SUCCEEDED:
        succeed_run(changes)
        writes.finish_run(changes, output_of=definition.sinks)
        return
    if decision.run_status != status or (status is RunStatus.WAITING and decision.waiting_on != run.waiting_on):
        changes.run_target = decision.run_status
        changes.run_values["waiting_on"] = decision.waiting_on
        if decision.run_status is RunStatus.WAITING:
            changes.event("run_waiting", waiting_on=decision.waiting_on)
        else:
            changes.event("run_resumed" if status is RunStatus.WAITING else "run_running")
    writes.finish_run(changes)


def _fire_due(session, changes: RunChanges, views: list[StepView], definition: Definition, out: Pass,
              writes: PassWrites) -> None:
    """Retries whose backoff has passed are queued again; timers fire; event waits time out."""
    run_id = changes.run.id
    retry_ids = [v.step_id for v in views if v.status is StepStatus.RETRYING and v.due]
    _queue(changes, views, definition, out, writes.move_steps(
        changes, views, retry_ids, StepStatus.QUEUED, attempt=NEXT_ATTEMPT, queued_at=NOW, due_at=None,
    ))
    for view in [v for v in views if v.status is StepStatus.WAITING and v.due]:
        if changes.run_target is RunStatus.FAILED:
            return
        if view.type == "timer":
            outcome = Outcome(output={"fired": True})
        elif view.type == "wait_event":
            outcome = Outcome(error=ErrorInfo("event_timeout", "no event arrived before timeout_s", False))
        else:
            continue
        writes.before_direct_writes(run_id)
        out.revoke += apply_outcome(session, changes, definition, views, view, outcome) or []


def _dispatch(changes: RunChanges, views, definition: Definition, step_ids: list[str], out: Pass,
              writes: PassWrites) -> None:
    _queue(changes, views, definition, out, writes.move_steps(
        changes, views, step_ids, StepStatus.QUEUED, only_from=[StepStatus.PENDING], attempt=NEXT_ATTEMPT,
        queued_at=NOW,
    ))


def _queue(changes: RunChanges, views: list[StepView], definition: Definition, out: Pass, queued: list[str]) -> None:
    """The steps just moved to `queued`: their events and messages."""
    if not queued:
        return
    by_id = {v.step_id: v for v in views}
    for step_id in queued:
        view = by_id[step_id]
        view.status, view.attempt = StepStatus.QUEUED, view.attempt + 1
        changes.event("step_queued", step_id, view.attempt)
        out.messages.append(_message(changes.run.id, view, definition))


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
            attempt=1, queued_at=NOW, started_at=NOW, due_at=due, correlation_key=key,
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


def _message(run_id: str, view: StepView, definition: Definition) -> StepMessage:
    return StepMessage(run_id, view.step_id, view.attempt, view.queue,
                       definition.timeout_s(definition.step(view.step_id)))


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
        # Outbox rows published since the last transaction: the next one deletes them (a pass, the
        # sweep, or the idle cleanup in _loop), so a publish costs no commit of its own.
        self.published_outbox: list[int] = []
        # When (time.monotonic()) the earliest due time ahead comes, as last read in a transaction
        # that could have changed it; None if none is ahead.
        self.next_due: float | None = None

    def advance_batch(self) -> int:
        """Advance up to batch_size runs with work in one transaction, then publish. Returns runs advanced.

        The batch is first tried without a savepoint per run (two round trips fewer per run) and with
        the writes of all its runs kept and done together at the end (PassWrites); if any run raises,
        or a guard there matches nothing, that transaction is rolled back whole and the batch is done
        again with each run in a savepoint of its own, so the run that trips a bug is set aside and the
        others advance.
        """
        try:
            out, advanced = self._advance_locked(isolated=False)
        except Exception as exc:  # noqa: BLE001 - redone run by run below; an outage goes up
            if isinstance(exc, DBAPIError) and database_unavailable(exc):
                raise
            log.info("a batch raised (%s: %s); advancing it again, one savepoint per run", type(exc).__name__, exc)
            out, advanced = self._advance_locked(isolated=True)
        self._publish(out.messages)
        broker.revoke(self.celery, out.revoke)
        return advanced

    def _advance_locked(self, isolated: bool) -> tuple[Pass, int]:
        out, runs = Pass(), []
        published = list(self.published_outbox)
        with transaction(self.sessions) as session:
            # A due time that has passed is fired by this pass, not left to the sweep: the loop wakes for it.
            reread_due = self._due_passed()
            if reread_due:
                repo.flag_runs_with_due_steps(session)
            runs = repo.lock_runs_with_work(session, self.batch_size, published_outbox=published)
            if runs:
                # A statement of its own, after the locks are held: in READ COMMITTED it reads the steps
                # as the runs' last writers committed them (a read in the locking statement would use
                # that statement's older snapshot, and miss an outcome committed while it waited).
                views = repo.steps_for_update(session, [r.id for r in runs])
                definitions = self.catalog.get_many(
                    session, [(r.tenant_id, r.workflow_id, r.workflow_version) for r in runs]
                )
                writes = PassWrites(session, deferred=not isolated)
                for run in runs:
                    key = (run.tenant_id, run.workflow_id, run.workflow_version)
                    with logs.bound(run_id=run.id, tenant=run.tenant_id):
                        if isolated:
                            self._advance_one(session, run, views[run.id], definitions[key], out)
                        else:
                            advance_run(session, run, views[run.id], definitions[key], out, writes)
                writes.flush()
                out.messages = repo.insert_outbox(session, out.messages)
                # A new due time ahead is on a step retrying or waiting after the pass; one that went
                # away unseen (a retry cancelled by fail-fast) only wakes the loop once for nothing.
                reread_due = reread_due or _has_due_times(views)
            if reread_due:
                self._read_next_due(session)
        del self.published_outbox[:len(published)]
        return out, len(runs)

    def _advance_one(self, session: Session, run, views: list[StepView], definition: Definition, out: Pass) -> None:
        """Advance one run in a savepoint: a run that trips a bug is set aside (logged, with an event)
        instead of failing the batch again and again and stalling every other run."""
        mine = Pass()
        try:
            with session.begin_nested():
                advance_run(session, run, views, definition, mine, PassWrites(session, deferred=False))
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
            log.exception("advancing run %s failed; it is set aside until an operator acts on it", run.id)
            with session.begin_nested():
                changes = RunChanges(run, run_values={"has_work": False})
                changes.event("scheduler_error", error=f"{type(exc).__name__}: {exc}"[:2000])
                repo.apply_run_changes(session, changes)
            return
        out.messages += mine.messages
        out.revoke += mine.revoke

    def _publish(self, messages: list[StepMessage]) -> None:
        """Publish messages that have outbox rows; the rows are deleted by the next transaction."""
        if not messages:
            return
        try:
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)
        except Exception as exc:  # noqa: BLE001 - the outbox keeps them; the sweep re-publishes
            log.warning("publishing %d step messages failed (%s); the sweep will retry", len(messages), exc)
            return
        self.published_outbox += [m.outbox_id for m in messages]

    def _forget_published(self) -> None:
        """Delete the outbox rows published since the last transaction, in a transaction of their own."""
        published = list(self.published_outbox)
        if published:
            with transaction(self.sessions) as session:
                repo.delete_outbox(session, published)
            del self.published_outbox[:len(published)]

    def sweep(self) -> None:
        """The safety net: flag due and lost work, re-publish what was committed but never sent, and
        every queued step if the broker lost its messages."""
        if self.epoch.lost():
            self._republish_queued()
        elif self.epoch.client is not None:
            self._republish_stranded()
        published = list(self.published_outbox)
        with transaction(self.sessions) as session:
            # First: a row this scheduler published is never stale, however long it was idle since.
            repo.delete_outbox(session, published)
            flagged = repo.flag_runs_with_due_steps(session)
            stale = repo.stale_outbox(session, self.settings.outbox_republish_after_s)
            messages = [StepMessage(m.run_id, m.step_id, m.attempt, m.queue, m.soft_time_limit, m.id) for m in stale]
            self._read_next_due(session)
        del self.published_outbox[:len(published)]
        if flagged:
            log.info("sweep flagged %d runs with due or lost steps", flagged)
        if messages:
            log.warning("re-publishing %d step messages left in the outbox", len(messages))
            self._publish(messages)

    def _due_passed(self) -> bool:
        return self.next_due is not None and time.monotonic() >= self.next_due

    def _read_next_due(self, session: Session) -> None:
        until_due = repo.seconds_until_next_due(session, self.settings.sweep_interval_s)
        self.next_due = None if until_due is None else time.monotonic() + until_due

    def _republish_queued(self) -> None:
        """Publish every `queued` step's message again; a copy that did survive is dropped by the
        workers' claim guard, so duplicates cost a little and lose nothing."""
        messages = self._queued_messages(None)
        if messages:
            log.warning("the broker lost its messages (restart or flush): re-publishing %d queued steps",
                        len(messages))
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)
        self.epoch.mark()

    def _republish_stranded(self) -> None:
        """Publish again the messages of steps still `queued` that a dead worker took with it (its
        copy comes back after the broker's visibility timeout and is dropped by the claim guard)."""
        stranded = broker.stranded_attempts(self.epoch.client, self.settings.stranded_after_s)
        if not stranded:
            return
        messages = self._queued_messages(set(stranded.values()))
        if messages:
            log.warning("re-publishing %d step messages a worker took and never ran (the worker died)",
                        len(messages))
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)
        broker.forget_stranded(self.epoch.client, list(stranded))

    def _queued_messages(self, attempts: set[tuple[str, str, int]] | None) -> list[StepMessage]:
        """The messages of the `queued` step attempts (of ``attempts`` only, if given)."""
        with transaction(self.sessions) as session:
            rows = repo.queued_steps(session, attempts)
            definitions = self.catalog.get_many(
                session, list({(r.tenant_id, r.workflow_id, r.workflow_version) for r in rows})
            )
        messages = []
        for r in rows:
            definition = definitions[(r.tenant_id, r.workflow_id, r.workflow_version)]
            messages.append(StepMessage(r.run_id, r.step_id, r.attempt, r.queue,
                                        definition.timeout_s(definition.step(r.step_id))))
        return messages

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
        """Seconds until the next due time as last read (no query: see next_due), at most a sweep interval."""
        if self.next_due is None:
            return self.settings.sweep_interval_s
        return max(0.0, min(self.next_due - time.monotonic() + 0.01, self.settings.sweep_interval_s))

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
            if self.published_outbox and timeout > IDLE_CLEANUP_S:
                # The next pass would delete the published rows; if no ring comes soon, delete them now.
                if wait_for_ring(IDLE_CLEANUP_S):
                    continue
                self._forget_published()
                timeout -= IDLE_CLEANUP_S
            wait_for_ring(timeout)

    def stop(self, *_args) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def _has_due_times(views: dict[str, list[StepView]]) -> bool:
    """Whether a step may hold a due time still ahead (a retry's backoff, a timer, an event's timeout)."""
    return any(v.status in _MAY_BE_DUE for steps in views.values() for v in steps)


_MAY_BE_DUE = frozenset({StepStatus.RETRYING, StepStatus.WAITING})

