"""The scheduler: claims runs that have work, advances them, publishes what they need.

Woken by the doorbell (a message on its own queue) or by the next due time (then the pass flags
the runs whose retries or timers are due); a slow sweep flags runs with due retries or expired
leases and re-publishes outbox rows left unsent. Several schedulers may run: runs are claimed with
``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import admission, broker, firing, logs, retention, sub_runs, tracing, writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import admission as decide_admission
from orchestrator.core import advance
from orchestrator.core import concurrency as decide_concurrency
from orchestrator.core.advance import KeptEvent
from orchestrator.core.inputs import Env
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import Event, Transition
from orchestrator.core.vocabulary import EventType
from orchestrator.db import repository as repo
from orchestrator.db.repository import admission as admission_rows
from orchestrator.db.repository import concurrency as concurrency_rows
from orchestrator.db.repository import items as item_rows
from orchestrator.db.repository.scheduling import bound_hold
from orchestrator.db.session import AutocommitSessions, database_unavailable, make_sessionmaker, transaction
from orchestrator.definitions import Definition
from orchestrator.messages import StepMessage, task_id
from orchestrator.settings import Settings
from orchestrator.states import StepStatus
from orchestrator.vanished import VanishedWatch

log = logging.getLogger(__name__)

# How long an idle scheduler waits for a ring before it deletes the outbox rows it published.
IDLE_CLEANUP_S = 0.2
# How often the sweep deletes held outbox rows whose steps moved on while they waited (cancelled): a
# tidy-up only, since an admission that comes to such a row deletes it; every sweep it was 5% of a
# flooded scheduler's time.
ORPHAN_LOOK_S = 60.0
# A scheduler frozen in a pass (SIGSTOP, a long pause, a VM migration) holds its runs' row locks, and
# the other schedulers skip those runs (SKIP LOCKED): PostgreSQL ends its session after this long
# idle in the pass's transaction (rolled back whole; the frozen one reconnects when it wakes), so
# another scheduler takes them within seconds. A statement (a lock wait included) ends after the second.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 30000
# While runs or steps wait for room under a concurrency key, the scheduler looks for keys with room
# after a pass that advanced runs (a holder's end rings it), at most this often…
CONCURRENCY_LOOK_MIN_S = 0.05
# …and at least this often, as a net for an end that rang nothing.
CONCURRENCY_LOOK_MAX_S = 0.5


@dataclass
class Pass:
    """What one pass over a batch of runs decided: messages to publish and tasks to revoke."""

    messages: list[StepMessage] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    # Runs were left flagged with work (child runs created, a parent woken by its child's end): the
    # scheduler rings its own doorbell, so the next pass takes them now rather than at the next sweep.
    ring: bool = False
    held: int = 0  # steps queued held for their windows' room (writer.Holding): the next look admits them


# A decision asks for facts a few times at most (the children of its due sub-run steps, the template
# context, a for-each step's kept items, the room under its concurrency keys (the run's, then its
# steps'), then the events kept for the keys it renders); more would be a bug, not a need.
_MAX_FACT_ROUNDS = 7


def decide_pass(session: Session, state: RunState, definition: Definition, env: Env,
                rooms: concurrency_rows.PassRooms | None = None) -> Transition:
    """The scheduler's transition for one locked run, reading the facts the decision asks for;
    ``rooms``: the pass's reader of concurrency room (one per transaction)."""
    rooms = rooms or concurrency_rows.PassRooms()
    kept: dict[tuple[str, str | None], KeptEvent | None] = {}
    for _ in range(_MAX_FACT_ROUNDS):
        try:
            return advance.on_advance(state, definition, env, kept=kept)
        except advance.NeedsFacts as needs:
            if needs.context:
                state = state.replace(outputs=repo.succeeded_outputs(session, state.id),
                                      approval=repo.latest_approval_decision(session, state.id))
            if needs.children:
                state = state.replace(children=repo.child_facts(session, state.id, needs.children))
            if needs.succeeded_items:
                state = state.replace(succeeded_items={**(state.succeeded_items or {}), **item_rows.succeeded_items(
                    session, state.id, needs.succeeded_items)})
            if needs.concurrency:
                state = state.replace(concurrency={**(state.concurrency or {}),
                                                   **rooms.read(session, state, needs.concurrency)})
            for key, name in needs.event_keys:
                found = repo.kept_event(session, state.tenant_id, key, name)
                kept[(key, name)] = None if found is None else KeptEvent(found.id, found.name, found.payload)
    raise RuntimeError(f"run {state.id}: the scheduler's decision kept asking for facts")


class Scheduler:
    """The scheduler process's loop, with every collaborator injected."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], celery, batch_size: int = 200):
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self.doorbell = broker.Doorbell(celery, settings.wake_queue)
        self.epoch = broker.BrokerEpoch(settings)
        self.vanished = VanishedWatch()  # step messages a worker killed in its BRPOP took with it
        self.catalog = DefinitionCatalog()
        # Cron schedules fire from this loop (orchestrator/firing.py); retention sweeps on a thread (run_forever).
        self.schedules = firing.Ticker(settings, sessions, self.catalog)
        self.env = Env(prices=settings.prices, max_items=settings.max_for_each_items,
                       max_depth=settings.max_run_depth)
        self.batch_size = batch_size
        self.stopping = threading.Event()
        # Outbox rows published since the last transaction: the next one deletes them (a pass, the
        # sweep, or the idle cleanup in _loop), so a publish costs no commit of its own.
        self.published_outbox: list[int] = []
        # When (time.monotonic()) the earliest due time ahead comes, as last read in a transaction
        # that could have changed it; None if none is ahead.
        self.next_due: float | None = None
        # Held step messages were left waiting for room in their queues' windows at the last look:
        # the loop looks again at next_admit (time.monotonic()), paced by core.admission.next_look_in.
        self.backlog = True
        self.next_admit = 0.0
        # The queues with held messages at the last look or publish: a pass writes the steps it queues
        # on them held (writer.Holding), where checking them after the commit would hold them anyway.
        self.held_queues: set[str] = set()
        self.next_orphan_look = 0.0  # when the sweep next deletes held outbox rows whose steps moved on
        self.admit_wait = settings.admit_interval_s
        self.last_look: float | None = None
        self.last_full_look = -math.inf  # when a look last counted every queue's places (admit)
        # Each queue's drain rate while it has a backlog (places freed a second, as its looks found them),
        # which stretches its window (core.admission.stretched); forgotten when its backlog is gone.
        self.drain_rates: dict[str, float] = {}
        # The look's and the admissions' statements, in autocommit on a connection the loop keeps (on
        # PostgreSQL): taking one from the pool and giving it back cost as much CPU as a statement.
        engine = getattr(sessions, "kw", {}).get("bind")  # none for sessions on a held connection (tests/bench/census.py)
        self.statements = (AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
                           if isinstance(engine, Engine) and engine.dialect.name == "postgresql" else None)
        # Runs or steps may wait for room under a concurrency key: looked for after passes, and at
        # least every CONCURRENCY_LOOK_MAX_S (wake_waiters); until the first look, assume some do.
        self.waiters_known = True
        self.next_waiters_look = 0.0
        self.waiters_look_after = 0.0
        self.look_wanted = False  # a pass advanced runs since the last look (a holder may have ended)

    def advance_batch(self) -> int:
        """Advance up to batch_size runs with work in one transaction, then publish. Returns runs advanced.

        The batch is first tried without a savepoint per run (two round trips fewer per run) and with
        the transitions of all its runs written together (writer.apply_batch); if any run raises,
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
        if out.held and not self.backlog:
            self.backlog, self.next_admit = True, time.monotonic()  # admitted by the loop's next look
        self._publish(out.messages)
        broker.revoke(self.celery, out.revoke)
        if out.ring:
            self.doorbell.ring("pass")
        return advanced

    def _advance_locked(self, isolated: bool) -> tuple[Pass, int]:
        out, runs = Pass(), []
        published = list(self.published_outbox)
        with transaction(self.sessions) as session:
            bound_hold(session, IDLE_IN_TRANSACTION_TIMEOUT_MS, STATEMENT_TIMEOUT_MS)
            # A due time that has passed is fired by this pass, not left to the sweep: the loop wakes for it.
            reread_due = self._due_passed()
            if reread_due:
                repo.flag_runs_with_due_steps(session)
            runs = repo.lock_runs_with_work(session, self.batch_size, published_outbox=published)
            rooms = concurrency_rows.PassRooms()
            if runs:
                # A statement of its own, after the locks are held: in READ COMMITTED it reads the steps
                # as the runs' last writers committed them (a read in the locking statement would use
                # that statement's older snapshot, and miss an outcome committed while it waited).
                steps = repo.steps_for_update(session, [r.id for r in runs])
                definitions = self.catalog.get_many(
                    session, [(r.tenant_id, r.workflow_id, r.workflow_version) for r in runs]
                )
                transitions: list[Transition] = []
                for run in runs:
                    state = RunState.from_row(run, steps[run.id])
                    definition = definitions[(run.tenant_id, run.workflow_id, run.workflow_version)]
                    with logs.bound(run_id=run.id, tenant=run.tenant_id):
                        if isolated:
                            transitions += self._advance_one(session, state, definition, out, rooms)
                        else:
                            transitions.append(decide_pass(session, state, definition, self.env, rooms))
                            rooms.took(transitions[-1])
                if not isolated:
                    holding = writer.Holding(frozenset(self.held_queues), {r.id: r.priority for r in runs}) \
                        if self.held_queues else None
                    written = writer.apply_batch(session, transitions, holding)
                    out.messages, out.revoke = written.messages, written.revoke
                    out.ring, out.held = written.wakes_scheduler, written.held
                    for transition in transitions:
                        self._follow_up(session, transition, written, definitions, out)
                # A new due time ahead is on a step retrying or waiting after the pass; one that went
                # away unseen (a retry cancelled by fail-fast) only wakes the loop once for nothing.
                reread_due = reread_due or _has_due_times(t.after for t in transitions)
            if reread_due:
                self._read_next_due(session)
        del self.published_outbox[:len(published)]
        self.waiters_known |= rooms.locked  # a decision read a key's room: it may have held a waiter
        return out, len(runs)

    def _advance_one(self, session: Session, state: RunState, definition: Definition, out: Pass,
                     rooms: concurrency_rows.PassRooms) -> list[Transition]:
        """Advance one run in a savepoint: a run that trips a bug is set aside (logged, with an event)
        instead of failing the batch again and again and stalling every other run. The transition
        written, if one was."""
        try:
            with session.begin_nested():
                transition = decide_pass(session, state, definition, self.env, rooms)
                written = writer.apply(session, transition)
                if not written.applied:
                    raise repo.StaleRunState(f"a step of run {state.id} is not as read under its lock")
                self._follow_up(session, transition, written, {(state.tenant_id, state.workflow_id,
                                                                state.workflow_version): definition}, out)
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
            log.exception("advancing run %s failed; it is set aside until an operator acts on it", state.id)
            with session.begin_nested():
                writer.apply(session, Transition(run=state, run_values={"has_work": False}, events=(
                    Event(EventType.SCHEDULER_ERROR, data={"error": f"{type(exc).__name__}: {exc}"[:2000]}),)))
            return []
        rooms.took(transition)
        out.messages += written.messages
        out.revoke += written.revoke
        out.ring |= written.wakes_scheduler
        return [transition]

    def _follow_up(self, session: Session, transition: Transition, written: writer.Written, definitions: dict,
                   out: Pass) -> None:
        """The child runs the transition (written) asked for, and those it stopped (orchestrator/sub_runs.py)."""
        if not (transition.children or transition.stop_children or written.started.get(transition.run.id)):
            return
        run = transition.run
        done = sub_runs.follow_up(session, self.settings, self.catalog, transition, written, env=self.env,
                                  definition=definitions[(run.tenant_id, run.workflow_id, run.workflow_version)])
        out.messages += done.messages
        out.revoke += done.revoke
        out.ring |= done.ring

    def wake_waiters(self) -> int:
        """Flag for a pass the runs whose waiters' concurrency keys have room again (core.concurrency.
        to_wake: in the order they start in); how many. The pass decides again under the lock."""
        now = time.monotonic()
        with transaction(self.sessions) as session:
            rows, holders = concurrency_rows.waiting(session)
            definitions = self.catalog.get_many(
                session, list({(w.tenant_id, w.workflow_id, w.workflow_version) for w in rows}))
            waiters = [waiter for row in rows
                       for waiter in _waiters(row, definitions[(row.tenant_id, row.workflow_id, row.workflow_version)],
                                              holders)]
            flagged = concurrency_rows.flag(session, decide_concurrency.to_wake(waiters))
        self.waiters_known, self.look_wanted = bool(rows), False
        self.waiters_look_after, self.next_waiters_look = now + CONCURRENCY_LOOK_MIN_S, now + CONCURRENCY_LOOK_MAX_S
        return flagged

    def _publish(self, messages: list[StepMessage]) -> None:
        """Publish messages that have outbox rows, as far as their queues' windows have room (the rest
        is held: admission.checked); the rows are deleted by the next transaction."""
        if not messages:
            return
        try:
            passed = admission.checked(self.celery, self.statements or (lambda: transaction(self.sessions)), messages)
        except DBAPIError as exc:
            log.warning("checking the window for %d step messages failed (%s); the sweep will retry", len(messages), exc)
            return
        if len(passed) < len(messages):
            sent = set(passed)
            self.held_queues |= {m.queue for m in messages if m not in sent}
            if not self.backlog:
                self.backlog, self.next_admit = True, time.monotonic()
        self._publish_admitted(passed)

    def admit(self) -> int:
        """Admit held step messages into their queues' windows' room and publish them; how many.
        Sets when to look again while some are left (core.admission.next_look_in)."""
        now = time.monotonic()
        # Between two looks no longer apart than a freed place may wait, the queues the last admission
        # left held messages in are admitted into without a look: under a backlog a look nearly always
        # found room, so it was a statement per admission for nothing. A look finds the other queues.
        known = (self.statements is not None and bool(self.held_queues)
                 and now - self.last_full_look < self.settings.admit_max_wait_s)
        done = admission.admit_backlog(self.sessions, self.settings, list(self.published_outbox),
                                       statements=self.statements, queues=sorted(self.held_queues) if known else None,
                                       windows=self._stretched_windows())
        if not known:
            self.last_full_look = now
        del self.published_outbox[:done.forgotten]
        self._publish_admitted(done.messages)
        fastest = self.settings.admit_interval_s
        self.held_queues = done.left_in
        self._follow_drain(done, now)
        if done.left_in:
            elapsed = now - self.last_look if self.last_look is not None else fastest
            self.admit_wait = decide_admission.next_look_in(
                done.looked, elapsed_s=elapsed, previous_s=self.admit_wait, fastest_s=fastest,
                slowest_s=max(self.settings.admit_max_wait_s, fastest))
            self.last_look = now
        else:  # nothing held: the next look comes with a ring, at the fastest pace
            self.admit_wait, self.last_look = fastest, None
        self.backlog, self.next_admit = bool(done.left_in), now + self.admit_wait
        return len(done.messages)

    def _stretched_windows(self) -> dict[str, int]:
        """The windows of the queues with a backlog, stretched to their drain (core.admission.stretched).
        A queue's own window (SWITCHYARD_QUEUE_WINDOWS) is an operator's bound, kept as set: never stretched."""
        s = self.settings
        return {queue: decide_admission.stretched(s.dispatch_window, rate, seconds=s.window_seconds, most=s.window_max)
                for queue, rate in self.drain_rates.items() if queue not in s.queue_windows}

    def _follow_drain(self, done: admission.Admission, now: float) -> None:
        """Update the drain rate of each queue a look left a backlog in from what it admitted since the
        look before (which left one too); forget the others'."""
        if self.last_look is not None:
            for looked in done.looked:
                if looked.queue in done.left_in:
                    self.drain_rates[looked.queue] = decide_admission.drained_per_s(
                        self.drain_rates.get(looked.queue), looked.admitted, now - self.last_look)
        for queue in set(self.drain_rates) - done.left_in:
            del self.drain_rates[queue]

    def _publish_admitted(self, messages: list[StepMessage]) -> None:
        """Publish messages that hold their places in their windows; the rows are deleted by the next transaction."""
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
            self._republish_vanished()
        published = list(self.published_outbox)
        with transaction(self.sessions) as session:
            bound_hold(session, IDLE_IN_TRANSACTION_TIMEOUT_MS, STATEMENT_TIMEOUT_MS)
            # First: a row this scheduler published is never stale, however long it was idle since.
            repo.delete_outbox(session, published)
            if time.monotonic() >= self.next_orphan_look:
                admission_rows.forget_orphans(session)
                self.next_orphan_look = time.monotonic() + ORPHAN_LOOK_S
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
        broker.revoke(self.celery, self.schedules.tick(force=True))  # a schedule changed through the API

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

    def _republish_vanished(self) -> None:
        """Publish again the messages of steps long `queued` that are nowhere in Redis at two sweeps in a
        row: a worker killed in its BRPOP took them (orchestrator/vanished.py)."""
        with transaction(self.sessions) as session:
            rows = repo.queued_steps(session, published_before_s=self.settings.stranded_after_s)
        queued = {task_id(r.run_id, r.step_id, r.attempt): r for r in rows}
        gone = self.vanished.confirm(self.epoch.client, {t: r.queue for t, r in queued.items()})
        messages = self._queued_messages({(queued[t].run_id, queued[t].step_id, queued[t].attempt) for t in gone}
                                         ) if gone else []
        if messages:
            log.warning("re-publishing %d step messages that vanished from the broker (a worker killed while "
                        "taking them)", len(messages))
            broker.publish_steps(self.celery, messages, self.settings.cancel_grace_s)

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
        """Advance batches until no run has work left. Returns runs advanced.

        Between batches, a look for room that is due is made: a flood's first passes write most of
        its steps held, and the workers would run dry on the window's first messages while the
        passes go on (2,000 runs take ten batches)."""
        total = 0
        while not self.stopping.is_set():
            advanced = self.advance_batch()
            total += advanced
            if advanced < self.batch_size:
                return total
            if self.backlog and time.monotonic() >= self.next_admit:
                self.admit()
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
        retention.start_sweeper(self.settings, self.sessions, self.stopping)
        while not self.stopping.is_set():
            try:
                with self.doorbell.listening(self.settings.sweep_interval_s) as wait_for_ring:
                    self._loop(wait_for_ring)
            except Exception:  # noqa: BLE001 - a passing outage must not end the scheduler
                log.exception("scheduler pass failed; reconnecting in 1s")
                self.stopping.wait(1.0)
        if self.statements is not None:
            self.statements.close()

    def _loop(self, wait_for_ring) -> None:
        next_sweep, drain = 0.0, True
        while not self.stopping.is_set():
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep, drain = time.monotonic() + self.settings.sweep_interval_s, True
            broker.revoke(self.celery, self.schedules.tick())
            advanced = 0
            if drain:  # not when only the pace of admission woke the loop: no run has new work then
                with tracing.continued("scheduler pass", self.doorbell.take_trace()):  # the ringer's trace
                    advanced = self.drain()
            self.look_wanted |= bool(advanced)
            if self.waiters_known and time.monotonic() >= self._next_look() and self.wake_waiters():
                drain = True  # the woken runs' passes now
                continue
            # While a backlog is known, the pace decides when to look for room (a ring does not: rings
            # come with every step's end, places free at the pace's rate); with none known, a ring
            # may be a publisher's that held messages: look now (one statement if nothing is held).
            if not self.backlog or time.monotonic() >= self.next_admit:
                self.admit()
            timeout = min(self.wait_timeout(), max(next_sweep - time.monotonic(), 0.0),
                          self.schedules.seconds_until_due())
            if self.waiters_known:
                timeout = min(timeout, max(self._next_look() - time.monotonic(), 0.0))
            paced = self.backlog and self.next_admit - time.monotonic() < timeout
            if paced:
                timeout = max(self.next_admit - time.monotonic(), 0.0)
            if self.published_outbox and timeout > IDLE_CLEANUP_S:
                # The next pass would delete the published rows; if no ring comes soon, delete them now.
                if wait_for_ring(IDLE_CLEANUP_S):
                    drain = True
                    continue
                self._forget_published()
                timeout -= IDLE_CLEANUP_S
            drain = bool(wait_for_ring(timeout)) or not paced

    def _next_look(self) -> float:
        """When (time.monotonic()) to look for concurrency waiters to wake, while some are known."""
        return self.waiters_look_after if self.look_wanted else self.next_waiters_look

    def stop(self, *_args) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def _waiters(row: concurrency_rows.WaitingRow, definition: Definition,
             holders: dict[tuple[str, ...], int]) -> list[decide_concurrency.Waiter]:
    """The waiter a look read, on each of its keys, with the limit its definition sets."""
    if row.step_id is None:
        # A run's keys are "<index>:<key>", the index of their entry in its version's `concurrency`.
        scope_keys = [(decide_concurrency.RUN, row.tenant_id, row.workflow_id, key) for key in row.keys]
        limits = [definition.concurrency_keys[int(key.partition(":")[0])].limit for key in row.keys]
        waiter = row.run_id
    else:
        scope_keys = [(decide_concurrency.STEP, row.keys[0])]
        limits = [definition.step(row.step_id).concurrency.limit]
        waiter = f"{row.run_id}/{row.step_id}"
    return [decide_concurrency.Waiter(row.run_id, waiter, scope_key, limit, holders.get(scope_key, 0), row.flagged)
            for scope_key, limit in zip(scope_keys, limits, strict=True)]


def _has_due_times(runs: Iterable[RunState]) -> bool:
    """Whether a step may hold a due time still ahead (a retry's backoff, a timer, an event's timeout)."""
    return any(s.status in _MAY_BE_DUE for run in runs for s in run.steps.values())


_MAY_BE_DUE = frozenset({StepStatus.RETRYING, StepStatus.WAITING})

