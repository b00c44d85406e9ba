"""The one Celery task: claim an attempt, run its executor, hand the outcome to the outcome writer.

Exceptions become outcomes here and only here (the worker maps an exception to an outcome in
exactly one place).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestrator import broker, dispatch, logs, outcomes, redact, streams, templates
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import items
from orchestrator.core.inputs import AttemptReport, Env
from orchestrator.core.reports import ErrorInfo, Outcome, Suspension
from orchestrator.core.vocabulary import ErrorCode
from orchestrator.db import repository as repo
from orchestrator.db.session import (
    AutocommitSessions,
    HeldConnectionSessions,
    database_unavailable,
    make_engine,
    make_sessionmaker,
    transaction,
)
from orchestrator.errors import StepError
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings
from orchestrator.writer import ClaimNext, Written
from workers import executors
from workers import metrics as worker_metrics
from workers.context import StepContext, Suspend

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Per-process resources: a database engine must not cross a fork, so each child builds its own."""

    settings: Settings
    celery: Celery
    pid: int

    def __post_init__(self):
        # No ping before each transaction (a round trip each, twice a step): a claim or an outcome that
        # meets a dropped connection is retried (see DatabaseUnavailable and _record).
        engine = make_engine(self.settings, pool_pre_ping=False)
        sessions = make_sessionmaker(engine)
        # For work done in one statement (the claim on PostgreSQL, a success as claimed, an outbox
        # row's deletion): in autocommit it costs no BEGIN and COMMIT, two round trips.
        self.autocommit = (AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
                           if engine.dialect.name == "postgresql" else None)
        streams.install_publisher([sessions] + ([self.autocommit] if self.autocommit else []),
                                  streams.make_bus(self.settings), linger_s=STREAM_LINGER_S)
        # Each thread (the task's, the outcome writer, the heartbeat) keeps its connections: at most
        # one of each kind, so up to five per worker process on PostgreSQL.
        self.sessions = HeldConnectionSessions(sessions)
        self.catalog = DefinitionCatalog()
        self.env = Env(prices=self.settings.prices, max_items=self.settings.max_for_each_items,
                       max_depth=self.settings.max_run_depth)
        self.doorbell = broker.Doorbell(self.celery, self.settings.wake_queue)
        self.heartbeats = _Heartbeats(self)
        self.outcomes_behind = _OutcomesBehind()

    def one_statement(self) -> AbstractContextManager[Session]:
        """A session for work done in one statement: in autocommit on PostgreSQL, a transaction elsewhere."""
        return self.autocommit() if self.autocommit is not None else transaction(self.sessions)

    def transaction(self) -> AbstractContextManager[Session]:
        """A session in a transaction of its own, committed when the block ends: on PostgreSQL written
        out on the autocommit connection, its BEGIN sent with its first statement (the outcome's lock)."""
        return self.autocommit.transaction() if self.autocommit is not None else transaction(self.sessions)


_runtimes: dict[int, Runtime] = {}


def _runtime(settings: Settings, celery: Celery) -> Runtime:
    pid = os.getpid()
    if pid not in _runtimes:
        _runtimes.clear()  # a forked child must not reuse its parent's connections
        _runtimes[pid] = Runtime(settings, celery, pid)
    return _runtimes[pid]


def register(app: Celery, settings: Settings) -> None:
    # max_retries=None: a claim is retried for as long as the database stays down (see below).
    # throws: an attempt that failed ends the task in AttemptFailed, an expected error (no traceback).
    @app.task(name=broker.RUN_STEP_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False,
              max_retries=None, throws=(AttemptFailed,))
    def run_step(task, run_id: str, step_id: str, attempt: int) -> str:
        worker = f"{task.request.hostname or 'worker'}:{os.getpid()}"
        eager = EagerBudget.of(task.request, app.conf.get(broker.CONF_EAGER) or 0.0,
                               _announcer(app, task.request.hostname))
        try:
            return task_result(execute_attempt(_runtime(settings, app), run_id, step_id, attempt, worker, eager))
        except DatabaseUnavailable as exc:
            # The attempt was never claimed: nothing ran. Send the message again shortly rather than
            # acknowledge it and leave the step `queued` with no message anywhere.
            delay = min(2 ** task.request.retries, CLAIM_RETRY_MAX_DELAY_S)
            log.warning("database unavailable before %s.%s attempt %d was claimed (%s); retrying in %ss",
                        run_id, step_id, attempt, exc, delay)
            raise task.retry(countdown=delay) from exc

    # A process that stops normally (a warm shutdown, max-tasks-per-child) writes what it still holds;
    # prefork children send worker_process_shutdown, the threads and solo pools worker_shutdown.
    signals.worker_process_shutdown.connect(_write_held_outcomes, weak=False)
    signals.worker_shutdown.connect(_write_held_outcomes, weak=False)


def _write_held_outcomes(**_kwargs) -> None:
    rt = _runtimes.get(os.getpid())
    if rt is not None:
        rt.outcomes_behind.flush()


class DatabaseUnavailable(Exception):
    """The database could not be reached to claim an attempt."""


class AttemptFailed(Exception):
    """The attempt failed (its outcome, a retry or a failure for good, is the database's and was handed
    to the outcome writer): raised so that Celery's events, and Flower, show the task FAILURE rather
    than SUCCESS. Celery acknowledges the message of a task that raised (acks_late with its default
    task_acks_on_failure_or_timeout), so nothing is delivered again, and no Celery retry is asked for."""


def task_result(outcome: Outcome | None) -> str:
    """What Celery's events show of an attempt: ``succeeded``, ``waiting`` (it suspended) or ``dropped``
    (a stale or duplicate delivery, or one deferred by a pause); raises AttemptFailed if it failed."""
    if outcome is None:
        return "dropped"
    if outcome.suspend is not None:
        return "waiting"
    if outcome.error is not None:
        raise AttemptFailed(f"{outcome.error.code}: {outcome.error.message}"[:1000])
    return "succeeded"


# How long a worker's live-stream publisher waits for more to send once it has something: a short
# step's claim and outcome then go out as one message (see streams._Publisher).
STREAM_LINGER_S = 0.02
# Delays between claims tried while the database is down stay far below Redis' visibility timeout.
CLAIM_RETRY_MAX_DELAY_S = 10
# How long a worker keeps trying to write an outcome it has while the database is down.
RECORD_RETRY_S = 300


@dataclass(frozen=True)
class EagerBudget:
    """How long a Celery task may go on running the steps its steps' successes queued (eager steps,
    Settings.worker_eager_s): while it has run for less than ``slack`` seconds, and only a step whose
    own soft time limit still fits in the task's (each message's carries ``slack`` more than its step's,
    so the task's limit never cuts a step short of its own)."""

    started: float  # time.monotonic() when the task started
    slack: float
    soft_limit: float | None  # the task's soft time limit, if its message had one
    # Sends a Celery task event (type, task id, fields), so that Flower shows an eager step as the task
    # it would have been; None where the workers send no task events.
    announce: Callable[..., None] | None = None

    @classmethod
    def of(cls, request, slack: float, announce: Callable[..., None] | None = None) -> EagerBudget | None:
        if slack <= 0:
            return None
        _hard, soft = request.timelimit or (None, None)
        return cls(time.monotonic(), slack, soft, announce)

    def fits(self, message: StepMessage) -> bool:
        elapsed = time.monotonic() - self.started
        return elapsed < self.slack and (self.soft_limit is None or elapsed + message.soft_time_limit <= self.soft_limit)


def execute_attempt(rt: Runtime, run_id: str, step_id: str, attempt: int, worker: str,
                    eager: EagerBudget | None = None) -> Outcome | None:
    """Run one delivered attempt end to end and return its outcome; a stale or duplicate delivery does
    nothing (None). With ``eager``, a success that queued the one next step of its run on the same
    queue is followed by that step, claimed here without its message (its outbox row is deleted by the
    claim), while the budget lasts; each such step's outcome goes to Celery's event stream as its own
    task's would, and the outcome returned is the delivered attempt's.

    With ``worker_record_behind``, the outcome is written after this returns (see _OutcomesBehind);
    the calling thread's next attempt waits for it before its claim. An outcome that may be followed is
    written before.

    Raises DatabaseUnavailable if an attempt could not be claimed because the database is down (an eager
    step's outbox row then stays, and the sweep publishes its message). An eager step claimed with its
    predecessor's outcome is `running` with a lease: if the database goes down before it has run, the
    lease's expiry retries it, as for any attempt whose worker stopped.
    """
    rt.outcomes_behind.wait()
    with logs.bound(run_id=run_id, step_id=step_id, attempt=attempt):
        done = _execute_attempt(rt, outcomes.AttemptKey(run_id, step_id, attempt), worker, None, eager)
    if done is None:
        return None
    outcome, following = done
    while following is not None:
        following = _follow(rt, following, worker, eager)
    return outcome


@dataclass(frozen=True)
class _Next:
    """The step a worker runs next itself (eager): its message, and its claim if the outcome that
    queued it claimed it too (writer.ClaimNext; else it is claimed with its outbox row)."""

    message: StepMessage
    claimed: repo.Claimed | None = None


def _follow(rt: Runtime, following: _Next, worker: str, eager: EagerBudget) -> _Next | None:
    """Run the eager step ``following`` (announced to Celery's event stream as its task would be); the
    step to run after it, if any."""
    message = following.message
    key = outcomes.AttemptKey(message.run_id, message.step_id, message.attempt)
    _announce(eager, message.task_id, ("task-received", {
        "name": broker.RUN_STEP_TASK, "args": repr([key.run_id, key.step_id, key.attempt]), "kwargs": "{}",
        "retries": 0, "root_id": message.task_id, "parent_id": None}), ("task-started", {}))
    started = time.monotonic()
    with logs.bound(run_id=key.run_id, step_id=key.step_id, attempt=key.attempt):
        done = _execute_attempt(rt, key, worker, message.outbox_id, eager, following.claimed)
    try:
        result = task_result(done[0] if done is not None else None)
    except AttemptFailed as failed:
        _announce(eager, message.task_id, ("task-failed", {"exception": repr(failed), "traceback": ""}))
    else:
        _announce(eager, message.task_id, ("task-succeeded", {"result": repr(result),
                                                              "runtime": time.monotonic() - started}))
    return done[1] if done is not None else None


# Eager steps' task events go out from a thread of their own, in order, off the step's path.
_EVENTS = broker.Courier("switchyard-eager-events")


class _EagerEvents:
    """The dispatcher of this process's eager steps' task events, used only by _EVENTS's thread. Kept
    for the process, its task events are grouped as Celery's own worker groups them (one `task.multi`
    message, which event receivers such as Flower's unpack) and sent once no more wait: a step's three
    events cost one publish or less, where a dispatcher opened for each cost 0.6 ms of CPU per step,
    a third of the GIL's time in a worker child running a chain."""

    def __init__(self, app: Celery, hostname: str | None):
        self.app, self.hostname = app, hostname
        self.connection = self.dispatcher = None

    def send(self, task_id: str, events: tuple[tuple[str, dict], ...]) -> None:
        try:
            dispatcher = self._dispatcher()
            for event_type, fields in events:
                dispatcher.send(event_type, uuid=task_id, **fields)
            if not _EVENTS.waiting():
                dispatcher.flush()
        except Exception:
            self.close()  # best effort, as Celery's own events: a lost connection costs these events
            raise

    def _dispatcher(self):
        if self.dispatcher is None:
            self.connection = self.app.connection_for_write()
            self.dispatcher = self.app.events.Dispatcher(
                self.connection, hostname=self.hostname, buffer_while_offline=False, buffer_group=["task"],
                buffer_limit=_EVENTS_PER_MESSAGE)
        return self.dispatcher

    def close(self) -> None:
        for part in (self.dispatcher, self.connection):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        self.connection = self.dispatcher = None


# Events grouped into one message at most (more are sent in several).
_EVENTS_PER_MESSAGE = 100


def _announcer(app: Celery, hostname: str | None) -> Callable[..., None] | None:
    if not app.conf.worker_send_task_events:
        return None
    events = _announcers.get((os.getpid(), id(app), hostname))
    if events is None:  # one per process: a forked child starts with none of its parent's
        events = _announcers[(os.getpid(), id(app), hostname)] = _EagerEvents(app, hostname)

    def announce(task_id: str, *fields: tuple[str, dict]) -> None:
        _EVENTS.send(functools.partial(events.send, task_id, fields), "eager step's task event")

    return announce


_announcers: dict[tuple[int, int, str | None], _EagerEvents] = {}


def _announce(eager: EagerBudget, task_id: str, *events: tuple[str, dict]) -> None:
    if eager.announce is not None:
        eager.announce(task_id, *events)


def _execute_attempt(rt: Runtime, key: outcomes.AttemptKey, worker: str, outbox_id: int | None,
                     eager: EagerBudget | None, claimed: repo.Claimed | None = None) -> tuple[Outcome, _Next | None] | None:
    """Claim and run one attempt (``claimed`` already: by the outcome that queued it); its outcome and
    the step to run after it, if any."""
    if claimed is not None:
        with rt.one_statement() as session:
            claim = outcomes.claim_of(session, rt.catalog, key, claimed)
    else:
        claim = _claim(rt, key, worker, outbox_id)
    if claim is None:
        return None
    logs.bind(tenant=claim.tenant_id)  # undone with the rest when execute_attempt's block ends
    started = time.monotonic()
    log.info("attempt started on %s", worker)
    ctx = _step_context(rt.settings, claim)
    heartbeat = rt.heartbeats.watch(ctx)
    try:
        with worker_metrics.attempt(ctx.step.type):
            outcome = run_executor(ctx)
    except BaseException:
        rt.heartbeats.forget(heartbeat)
        raise
    worker_metrics.finished(ctx.step.type,
                            "succeeded" if outcome.succeeded else "waiting" if outcome.suspend else "failed",
                            time.monotonic() - started, outcome.usage)
    report = AttemptReport(key.run_id, key.step_id, key.attempt, outcome, queue_ready=rt.settings.worker_dispatch)
    write = functools.partial(_write_outcome, rt, report, claim, heartbeat, started)
    if eager is not None and _may_be_followed(rt, claim, outcome):
        return outcome, write(follow=ClaimNext(worker, rt.settings.lease_s, _queue_of(rt, claim), eager.fits))
    if rt.settings.worker_record_behind:
        rt.outcomes_behind.submit(write)
    else:
        write()
    return outcome, None


def _may_be_followed(rt: Runtime, claim: outcomes.Claim, outcome: Outcome) -> bool:
    """Whether this outcome may queue a next step that this worker could run at once (eager): a step's
    success (not an item's) where a worker queues what it makes ready, on PostgreSQL (the claim that
    deletes the next step's outbox row is its one statement)."""
    return (rt.autocommit is not None and rt.settings.worker_dispatch and outcome.succeeded
            and outcome.suspend is None and items.parent_of(claim.step_id) is None
            and bool(claim.definition.dependents[claim.step_id]))


def _claim(rt: Runtime, key: outcomes.AttemptKey, worker: str, outbox_id: int | None = None) -> outcomes.Claim | None:
    """Claim the attempt (an eager step's with its ``outbox_id``); None (logged) for a stale or duplicate
    delivery or one deferred because its run is paused. Raises DatabaseUnavailable if the database is down."""
    try:
        with rt.one_statement() as session:
            claim = outcomes.claim_attempt(session, rt.catalog, key, worker=worker, lease_s=rt.settings.lease_s,
                                           outbox_id=outbox_id)
        if claim is None:
            with transaction(rt.sessions) as session:
                deferred = outcomes.defer_attempt(session, key)
    except DBAPIError as exc:
        if not database_unavailable(exc):
            raise
        raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
    if claim is None:
        what = "deferred %s.%s attempt %d: its run is paused" if deferred else "dropped stale delivery of %s.%s attempt %d"
        log.info(what, key.run_id, key.step_id, key.attempt)
    return claim


def _step_context(settings: Settings, claim: outcomes.Claim) -> StepContext:
    """What the executor of a claimed attempt sees."""
    step = claim.definition.step(claim.step_id)
    template_context = templates.run_context(
        claim.run_input, claim.outputs,
        {"id": claim.run_id, "attempt": claim.run_attempt, "workflow_id": claim.workflow_id},
        claim.approval, claim.attempt,
    )
    if claim.item_index is not None:  # a for-each item: its templates read `item` and `index`
        template_context.update(item=claim.item, index=claim.item_index)
    return StepContext(
        run_id=claim.run_id,
        step_id=claim.step_id,
        attempt=claim.attempt,
        step=step,
        template_context=template_context,
        checkpoint=claim.checkpoint,
        settings=settings,
        deadline=time.monotonic() + claim.definition.timeout_s(step),
        policy=claim.definition.policy,
        limits=claim.limits,
        run_usage=claim.run_usage,
        tenant_policy=claim.tenant_policy,
        tenant_id=claim.tenant_id,
    )


def _write_outcome(rt: Runtime, report: AttemptReport, claim: outcomes.Claim, heartbeat: _Beat,
                   started: float, follow: ClaimNext | None = None) -> _Next | None:
    """Record the outcome, then do what follows its commit: publish the steps it queued, wake the
    scheduler, revoke what fail-fast cancelled. The one step it queued on its own queue is not published
    but returned, to run here, if ``follow`` accepts its message: claimed with the outcome, or (if
    the outcome was written again step by step) to claim with its outbox row."""
    try:
        written = _record(rt, report, claim, follow)
    finally:
        # The heartbeat keeps the lease alive until the outcome is written, also while the database
        # is briefly down, so the attempt is not taken for lost.
        rt.heartbeats.forget(heartbeat)
    following = None
    if written.claimed is not None:
        following = _Next(written.messages[0], written.claimed)  # it took this step's place in the window
    elif written.messages:
        queue = _queue_of(rt, claim)
        if follow is not None and len(written.messages) == 1 and written.messages[0].queue == queue \
                and follow.accepts(written.messages[0]):
            following = _Next(written.messages[0])  # it takes this step's place in the window, as a handoff does
        else:
            # The step's place in its queue's window goes to the one next step it queued there (admission.checked).
            dispatch.publish_queued(rt.celery, rt.one_statement, written.messages,
                                    cancel_grace_s=rt.settings.cancel_grace_s, handoff_queue=queue)
    outcome = report.outcome
    result = "succeeded" if outcome.succeeded else "waiting" if outcome.suspend else f"error {outcome.error.code}"
    if not written.applied:
        log.info("attempt finished (%s) but was stopped meanwhile; its outcome was dropped", result)
        return None
    log.info("attempt finished: %s in %.3fs", result, time.monotonic() - started)
    if written.wakes_scheduler:
        rt.doorbell.ring(report.run_id)
    broker.revoke(rt.celery, written.revoke)
    return following


def _queue_of(rt: Runtime, claim: outcomes.Claim) -> str:
    """The queue the claimed attempt came from (a for-each item's is its step's)."""
    step_id = items.parent_of(claim.step_id) or claim.step_id
    return claim.definition.step(step_id).queue or rt.settings.default_queue


def _record(rt: Runtime, report: AttemptReport, claim: outcomes.Claim, claim_next: ClaimNext | None = None) -> Written:
    """Write the outcome, retrying with backoff while the database is unreachable (the work is done;
    losing its result would run it again)."""
    deadline = time.monotonic() + RECORD_RETRY_S
    delay = 0.2
    while True:
        try:
            return outcomes.record(rt, claim.definition, report, seen=claim.seen, env=rt.env, claim_next=claim_next)
        except DBAPIError as exc:
            if not database_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable while recording %s.%s attempt %d (%s); retrying in %.1fs",
                        report.run_id, report.step_id, report.attempt, str(exc).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_executor(ctx: StepContext) -> Outcome:
    """The executor's result or exception, as an Outcome; an error's message and details never carry a
    secret of this process (a provider may echo its API key back in an error body)."""
    outcome = _outcome_of(ctx)
    if outcome.error is not None:
        secrets, error = redact.known_secrets(ctx.settings), outcome.error
        outcome = dataclasses.replace(outcome, error=dataclasses.replace(
            error, message=redact.redact(error.message, secrets),
            details=redact.redact_json(dict(error.details), secrets) if error.details else None))
    return outcome


def _outcome_of(ctx: StepContext) -> Outcome:
    seen = dict(usage=ctx.usage, policy=ctx.decisions)
    try:
        output = executors.execute(ctx)
        return Outcome(output=output, **seen)
    except Suspend as suspend:
        suspension = Suspension(suspend.kind, suspend.text, suspend.checkpoint, suspend.call, suspend.due_in_s)
        return Outcome(suspend=suspension, **seen)
    except StepError as exc:
        return Outcome(error=ErrorInfo.of(exc), **seen)
    except SoftTimeLimitExceeded:
        return Outcome(error=ErrorInfo(ErrorCode.TIMEOUT.value, "the step ran past its timeout_s", True), **seen)
    except Exception as exc:  # noqa: BLE001 - any bug in a tool is that step's failure, not the worker's
        log.exception("step raised an unexpected error")
        return Outcome(error=ErrorInfo(ErrorCode.STEP_ERROR.value, f"{type(exc).__name__}: {exc}", True), **seen)


class _OutcomesBehind:
    """Writes outcomes after their tasks returned, so that a prefork child takes its next message
    while the outcome commits: Celery's hand-over between two tasks (the result to the main process,
    the ack, the next message fetched and passed on) takes about as long as the write.

    A calling thread has at most one outcome held: it waits for it before it claims again. What this
    changes on a crash is when, not what: a process that dies with an outcome unwritten leaves the
    attempt `running`, as it would if it died during a synchronous write, and the lease's expiry
    retries it either way (the message's redelivery, the only difference, fails the claim's guard).
    """

    def __init__(self):
        # One writer thread: outcomes are written in the order their tasks finished.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-outcome")
        self._held = threading.local()

    def submit(self, write: Callable[[], None]) -> None:
        context = contextvars.copy_context()  # the attempt's log fields, for the writer's log lines
        self._held.future = self._writer.submit(context.run, self._logged, write)

    @staticmethod
    def _logged(write: Callable[[], None]) -> None:
        try:
            write()
        except Exception:  # noqa: BLE001 - no task is left to fail: the log is where it goes
            log.exception("writing the attempt's outcome failed; its lease will expire and the step be retried")

    def wait(self) -> None:
        """Until the calling thread's held outcome, if any, is written."""
        future: Future | None = getattr(self._held, "future", None)
        if future is not None:
            future.result()
            self._held.future = None

    def flush(self) -> None:
        """Until every outcome submitted so far is written (the writer takes them in order)."""
        self._writer.submit(lambda: None).result()


@dataclass(eq=False)
class _Beat:
    """One attempt a process' heartbeat thread keeps alive."""

    ctx: StepContext
    next_at: float  # time.monotonic() of its next beat
    # The attempt's context, so the heartbeat's log lines name the run.
    log_context: contextvars.Context = field(default_factory=contextvars.copy_context)

    def wake_at(self) -> float:
        """When the thread must next look at it: its next beat, or its deadline if that comes first."""
        return self.next_at if self.ctx.stop.is_set() else min(self.next_at, self.ctx.deadline)


class _Heartbeats(threading.Thread):
    """Extends the leases of the attempts a process runs; sets an attempt's stop flag on cancellation
    or when its deadline passes.

    One thread per process, started with it, serves every attempt (several at once in a threads
    pool): starting a thread for each attempt cost more CPU than a no-op step's own work. Watching
    an attempt does not wake the thread unless the attempt needs it sooner than it wakes anyway.
    """

    def __init__(self, rt: Runtime):
        super().__init__(name="switchyard-heartbeat", daemon=True)
        self.rt = rt
        self.interval = min(rt.settings.lease_s / 3, 1.0)
        self.changed = threading.Condition()
        self.beats: set[_Beat] = set()
        self.wakes_at = 0.0  # when the thread wakes next (time.monotonic())
        self.start()

    def watch(self, ctx: StepContext) -> _Beat:
        beat = _Beat(ctx, time.monotonic() + self.interval)
        with self.changed:
            self.beats.add(beat)
            if beat.wake_at() < self.wakes_at:
                self.changed.notify()
        return beat

    def forget(self, beat: _Beat) -> None:
        """No more beats for this attempt (one already under way may still extend its lease, which a
        finished attempt's guard ignores)."""
        with self.changed:
            self.beats.discard(beat)

    def run(self) -> None:
        while True:
            with self.changed:
                now = time.monotonic()
                due = [beat for beat in self.beats if beat.wake_at() <= now]
                if not due:
                    # Idle, it still wakes every interval, so a new attempt rarely has to wake it.
                    self.wakes_at = min((beat.wake_at() for beat in self.beats), default=now + self.interval)
                    self.changed.wait(max(self.wakes_at - now, 0.0))
                    continue
                for beat in due:
                    beat.next_at = now + self.interval
            for beat in due:
                beat.log_context.run(self._beat, beat.ctx)

    def _beat(self, ctx: StepContext) -> None:
        if time.monotonic() >= ctx.deadline:
            ctx.stop.set()
        try:
            with transaction(self.rt.sessions) as session:
                alive = repo.extend_lease(session, ctx.run_id, ctx.step_id, ctx.attempt, self.rt.settings.lease_s)
        except Exception as exc:  # noqa: BLE001 - the database may be back by the next beat
            log.warning("heartbeat failed: %s", exc)
            return
        if not alive:
            ctx.stop.set()
