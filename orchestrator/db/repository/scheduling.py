"""The scheduler's side: locking the runs with work for a pass (and forgetting the outbox rows its
previous pass published), the outputs a pass reads, the sweep (runs whose due times or leases
passed, the next due time, queued attempts, a run's diagnosis facts) and the outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator import diagnosis
from orchestrator.db.models import Approval, Question
from orchestrator.db.repository.admission import held_window
from orchestrator.db.repository.changes import RunRow, others_succeeded
from orchestrator.db.repository.common import OUTBOX, RUNS, STEP_STATUSES, STEPS, now, sql_list
from orchestrator.db.repository.runs import run_steps
from orchestrator.db.repository.steps import NEXT_ATTEMPT, NOW, update_steps
from orchestrator.db.session import CompiledOnDriver, rows_on_driver, send_on_driver
from orchestrator.db.types import db_now, seconds_between
from orchestrator.messages import StepMessage
from orchestrator.states import RunStatus, StepStatus, step_allowed_from

# The scheduler's statements are built once: building a statement costs more than running it here.

# Lock up to :limit runs flagged with work, oldest first, skipping those another scheduler holds.
_RUNS_WITH_WORK = (
    select(RUNS)
    .where(RUNS.c.has_work.is_(True))
    .order_by(RUNS.c.created_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# The same, deleting outbox rows on the way (PostgreSQL runs a DELETE in a WITH even if unreferenced).
_RUNS_WITH_WORK_FORGETTING_OUTBOX = _RUNS_WITH_WORK.add_cte(
    delete(OUTBOX)
    .where(OUTBOX.c.id == any_(bindparam("published", type_=postgresql.ARRAY(Integer))), OUTBOX.c.held.is_(False))
    .cte("published")
)


def lock_runs_with_work(session: Session, limit: int, published_outbox: Sequence[int] = ()) -> Sequence[RunRow]:
    """Up to ``limit`` runs flagged with work, locked; runs another scheduler holds are skipped.

    The outbox rows ``published_outbox`` are deleted too: on PostgreSQL in the same statement, so the
    scheduler's pass pays no round trip for the messages its previous pass published.
    """
    if not published_outbox:
        return session.execute(_RUNS_WITH_WORK, {"limit": limit}).all()
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(
            _RUNS_WITH_WORK_FORGETTING_OUTBOX, {"limit": limit, "published": list(published_outbox)}
        ).all()
    delete_outbox(session, published_outbox)
    return session.execute(_RUNS_WITH_WORK, {"limit": limit}).all()


def outputs_if_others_succeeded(session: Session, run_id: str, step_id: str,
                                sinks: Sequence[str]) -> dict[str, Any] | None:
    """The outputs of the run's steps ``sinks`` other than ``step_id`` if every step of the run but
    ``step_id`` succeeded, else None."""
    if not session.execute(_OTHERS_SUCCEEDED, {"run_id": run_id, "step_id": step_id}).scalar_one():
        return None
    outputs = step_outputs(session, [(run_id, s) for s in sinks if s != step_id])
    return {s: output for (_, s), output in outputs.items()}


# Whether every step of the run :run_id but :step_id succeeded.
_OTHERS_SUCCEEDED = select(others_succeeded(bindparam("run_id")))


def step_outputs(session: Session, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The outputs of the succeeded steps among ``keys`` (run id, step id), by key."""
    if not keys:
        return {}
    rows = session.execute(
        select(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.output)
        .where(tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(keys), STEPS.c.status == StepStatus.SUCCEEDED.value)
    )
    return {(run_id, step_id): output for run_id, step_id, output in rows}


# --- the scheduler's sweep ----------------------------------------------------------------------


# The runs whose steps' due times the scheduler fires (a paused run's retry waits for its resume).
FIRING_RUN = (RunStatus.RUNNING, RunStatus.WAITING)


def flag_runs_with_due_steps(session: Session) -> int:
    """Flag runs whose retry/timer is due (running or waiting runs: a paused one's waits for its
    resume, and flagging it would buy a pass that does nothing, every sweep) or whose running step's
    lease expired (any run: an ended run stops its lost attempts); returns how many."""
    clock = db_now()
    due = select(STEPS.c.run_id).where(STEPS.c.due_at <= clock)
    lost = select(STEPS.c.run_id).where(STEPS.c.status == StepStatus.RUNNING.value, STEPS.c.lease_expires_at < clock)
    firing = RUNS.c.status.in_([s.value for s in FIRING_RUN])
    return session.execute(
        update(RUNS)
        .where(RUNS.c.has_work.is_(False), or_(and_(RUNS.c.id.in_(due), firing), RUNS.c.id.in_(lost)))
        .values(has_work=True)
    ).rowcount


def seconds_until_next_due(session: Session, passed_within_s: float) -> float | None:
    """Seconds until the earliest retry, timer or event timeout of a running or waiting run comes due:
    0 or less for one that passed in the last ``passed_within_s`` seconds (a due time can pass before
    the pass that wrote it reads it back, on a busy machine); None if there is none. An older one is
    left to the sweep, so a due time that stays cannot make the loop spin."""
    clock = db_now()
    return session.execute(
        select(seconds_between(clock, func.min(STEPS.c.due_at)))
        .select_from(STEPS.join(RUNS, RUNS.c.id == STEPS.c.run_id))
        .where(STEPS.c.due_at > db_now(-passed_within_s), RUNS.c.status.in_([s.value for s in FIRING_RUN]))
    ).scalar_one_or_none()


def queued_steps(session: Session, attempts: Sequence[tuple[str, str, int]] | None = None, *,
                 published_before_s: float | None = None) -> Sequence[Any]:
    """Every step attempt waiting in a broker queue (not held for its window: held, it has no message)
    (of ``attempts`` only, (run id, step id, attempt), if given; with ``published_before_s``, only those
    queued longer ago than that whose outbox row is gone, so published), with its run's workflow
    version (to rebuild its message)."""
    query = (
        select(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt, STEPS.c.queue, RUNS.c.tenant_id,
               RUNS.c.workflow_id, RUNS.c.workflow_version)
        .join(RUNS, RUNS.c.id == STEPS.c.run_id)
        .where(STEPS.c.status == StepStatus.QUEUED.value, STEPS.c.held.is_(False))
    )
    if attempts is not None:
        query = query.where(tuple_(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt).in_(list(attempts)))
    if published_before_s is not None:
        query = query.where(STEPS.c.queued_at < db_now(-published_before_s), ~exists().where(
            OUTBOX.c.run_id == STEPS.c.run_id, OUTBOX.c.step_id == STEPS.c.step_id, OUTBOX.c.attempt == STEPS.c.attempt))
    return session.execute(query).all()


def diagnosis_facts(
    session: Session, run_id: str
) -> tuple[list[diagnosis.StepFacts], dict[str, str], dict[str, str]]:
    """What ``diagnosis.diagnose`` reads about a run: its steps (with the database clock's view of their
    leases and due times), and its pending approvals and open questions by step id."""
    clock = now(session)
    steps = []
    items_running = _items_running(session, run_id, clock)
    for step in run_steps(session, run_id):
        due = step.due_at
        steps.append(diagnosis.StepFacts(
            step_id=step.step_id, type=step.type, status=StepStatus(step.status), queue=step.queue,
            attempt=step.attempt,
            lease_expired=bool(step.lease_expires_at is not None and step.lease_expires_at < clock),
            due_in_s=(due - clock).total_seconds() if due is not None else None,
            correlation_key=step.correlation_key, waiting_on=step.waiting_on,
            queued_for_s=(clock - step.queued_at).total_seconds() if step.queued_at is not None else None,
            worker=step.worker, lease_expires_at=step.lease_expires_at,
            window=held_window(session, step) if step.held and step.status == StepStatus.QUEUED.value else None,
            items_running=tuple(items_running.get(step.step_id, ())),
        ))
    approvals = dict(session.execute(
        select(Approval.step_id, Approval.id).where(Approval.run_id == run_id, Approval.status == "pending")
    ).all())
    questions = dict(session.execute(
        select(Question.step_id, Question.id).where(Question.run_id == run_id, Question.status == "open")
    ).all())
    return steps, approvals, questions


def _items_running(session: Session, run_id: str, clock: datetime) -> dict[str, list[diagnosis.StepFacts]]:
    """The run's for-each items that a worker runs under a lease not expired, by their step."""
    found: dict[str, list[diagnosis.StepFacts]] = {}
    for item in session.execute(
        select(STEPS.c.item_of, STEPS.c.step_id, STEPS.c.type, STEPS.c.queue, STEPS.c.attempt, STEPS.c.worker,
               STEPS.c.lease_expires_at)
        .where(STEPS.c.run_id == run_id, STEPS.c.item_of.is_not(None), STEPS.c.status == StepStatus.RUNNING.value,
               STEPS.c.worker.is_not(None), STEPS.c.lease_expires_at >= clock)
        .order_by(STEPS.c.item_of, STEPS.c.item_index)
    ):
        found.setdefault(item.item_of, []).append(diagnosis.StepFacts(
            step_id=item.step_id, type=item.type, status=StepStatus.RUNNING, queue=item.queue, attempt=item.attempt,
            worker=item.worker, lease_expires_at=item.lease_expires_at))
    return found


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A step message written held for room in its queue's window, with what the admission orders it by."""

    message: StepMessage
    tenant_id: str
    priority: int


def insert_held_outbox(session: Session, rows: Sequence[HeldRow]) -> None:
    """Write the outbox rows of messages held for their windows (the scheduler admits them)."""
    if rows:
        # RETURNING makes SQLAlchemy send the rows as multi-row VALUES (1,000 a statement), where a plain
        # executemany is one statement per row on psycopg 3: 7,200 INSERTs in a flood of 8,000 runs.
        session.execute(insert(OUTBOX).returning(OUTBOX.c.id),
                        [{**r.message.outbox_row(), "held": True, "tenant_id": r.tenant_id, "priority": r.priority}
                         for r in rows]).all()


def insert_outbox(session: Session, messages: list[StepMessage]) -> list[StepMessage]:
    """Write the messages' outbox rows; the messages, each with its row's ``outbox_id``."""
    if not messages:
        return []
    ids = session.execute(insert(OUTBOX).returning(OUTBOX.c.id), [m.outbox_row() for m in messages]).scalars()
    return [replace(m, outbox_id=outbox_id) for m, outbox_id in zip(messages, ids, strict=True)]


# The reported step's guard: where its success may come from (running), by the transition table.
_REPORTED_FROM = step_allowed_from(StepStatus.SUCCEEDED, [StepStatus.RUNNING])
_QUEUE_FROM = sql_list(step_allowed_from(StepStatus.QUEUED, [StepStatus.PENDING]))
_SUCCEED_FROM = sql_list(_REPORTED_FROM)

# The outcome writer's dispatch on PostgreSQL, in one statement: move the steps pending -> queued
# (next attempt) only if the step whose success made them ready is still running at its attempt
# (read by this statement, under the run's lock: the lock's own read may predate it), and write
# their outbox rows. The soft time limits go beside the step ids, one array each. Written as text
# (an UPDATE … FROM unnest(…) feeding an INSERT): the guards' allowed sets are enum constants of the
# transition table, formatted in once, like the claim's (attempts._CLAIM_PG).
_QUEUE_PG = f"""
    UPDATE steps SET status = 'queued', attempt = steps.attempt + 1, queued_at = clock_timestamp(), held = false
    FROM unnest(CAST(:step_ids AS varchar[]), CAST(:limits AS float8[])) AS next (step_id, soft_time_limit)
    WHERE steps.run_id = :run_id AND steps.step_id = next.step_id AND steps.status IN ({_QUEUE_FROM})
      AND EXISTS (SELECT 1 FROM steps AS done WHERE done.run_id = :run_id AND done.step_id = :done_step_id
                  AND done.attempt = :done_attempt AND done.status IN ({_SUCCEED_FROM}))
    RETURNING steps.run_id, steps.step_id, steps.attempt, steps.queue, next.soft_time_limit
"""
_QUEUE_WITH_OUTBOX_PG = text(f"""
WITH moved AS ({_QUEUE_PG})
INSERT INTO outbox (run_id, step_id, attempt, queue, soft_time_limit, created_at)
SELECT run_id, step_id, attempt, queue, soft_time_limit, clock_timestamp() FROM moved
RETURNING id, run_id, step_id, attempt, queue, soft_time_limit
""")


_QUEUE_WITH_OUTBOX_ON_DRIVER = CompiledOnDriver(_QUEUE_WITH_OUTBOX_PG)  # a chain's every step writes it
# The same without outbox rows: for a step claimed in the same transaction (attempts.send_claim).
_QUEUE_ON_DRIVER = CompiledOnDriver(text(_QUEUE_PG))


def queue_steps_with_outbox(session: Session, run_id: str, soft_time_limits: dict[str, float], done_step_id: str,
                            done_attempt: int) -> list[StepMessage]:
    """Queue the run's pending steps ``soft_time_limits`` names (their next attempt) and write their
    outbox rows, if the step ``done_step_id`` is still running at ``done_attempt``; the messages of
    the steps queued, each with its ``outbox_id``. The run must be locked by the caller."""
    step_ids = list(soft_time_limits)
    if session.get_bind().dialect.name == "postgresql":
        return _queued_messages(rows_on_driver(session, _QUEUE_WITH_OUTBOX_ON_DRIVER, _queue_params(
            run_id, soft_time_limits, done_step_id, done_attempt)))
    done = session.execute(select(STEPS.c.status).where(
        STEPS.c.run_id == run_id, STEPS.c.step_id == done_step_id, STEPS.c.attempt == done_attempt)).scalar()
    if done is None or STEP_STATUSES[done] not in _REPORTED_FROM:
        return []
    moved = update_steps(session, run_id, step_ids, StepStatus.QUEUED, only_from=[StepStatus.PENDING],
                         attempt=NEXT_ATTEMPT, queued_at=NOW)
    if not moved:
        return []
    found = session.execute(
        select(STEPS.c.step_id, STEPS.c.attempt, STEPS.c.queue).where(STEPS.c.run_id == run_id,
                                                                       STEPS.c.step_id.in_(moved))
    ).all()
    return insert_outbox(session, [StepMessage(run_id, step_id, attempt, queue, float(soft_time_limits[step_id]))
                                   for step_id, attempt, queue in found])


def send_queue_steps_with_outbox(session: Session, run_id: str, soft_time_limits: dict[str, float], done_step_id: str,
                                 done_attempt: int, *, outbox: bool = True) -> Callable[[], list[StepMessage]]:
    """queue_steps_with_outbox's statement on PostgreSQL, sent in ``sent_together``'s pipeline; the
    messages of the steps it queued, to read once the pipeline ended. Without ``outbox`` rows (and
    the messages without ``outbox_id``) for steps the same transaction claims."""
    sent = send_on_driver(session, _QUEUE_WITH_OUTBOX_ON_DRIVER if outbox else _QUEUE_ON_DRIVER, _queue_params(
        run_id, soft_time_limits, done_step_id, done_attempt))
    return lambda: _queued_messages(sent.rows())


def _queue_params(run_id: str, soft_time_limits: dict[str, float], done_step_id: str, done_attempt: int) -> dict:
    step_ids = list(soft_time_limits)
    return dict(run_id=run_id, step_ids=step_ids, limits=[float(soft_time_limits[s]) for s in step_ids],
                done_step_id=done_step_id, done_attempt=done_attempt)


def _queued_messages(rows) -> list[StepMessage]:
    return [StepMessage(r.run_id, r.step_id, r.attempt, r.queue, r.soft_time_limit, outbox_id=getattr(r, "id", None))
            for r in rows]


def delete_outbox(session: Session, outbox_ids: Sequence[int]) -> None:
    """Forget the outbox rows ``outbox_ids`` (their messages were published), but not one held since:
    another publisher (the sweep, republishing a row this one was still sending) found its window
    full, and its step now waits for an admission that needs the row."""
    if not outbox_ids:
        return
    if session.get_bind().dialect.name == "postgresql":  # after every publish: on the driver
        rows_on_driver(session, _DELETE_PUBLISHED_ON_DRIVER, {"ids": list(outbox_ids)})
    else:
        session.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(outbox_ids), OUTBOX.c.held.is_(False)))


_DELETE_PUBLISHED_ON_DRIVER = CompiledOnDriver(text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[])) AND NOT held"))


def stale_outbox(session: Session, older_than_s: float, limit: int = 1000) -> Sequence[Any]:
    """Outbox rows (with the outbox's columns) committed but not published after ``older_than_s``
    (the publisher died in between), oldest first."""
    return session.execute(
        select(OUTBOX).where(OUTBOX.c.created_at < db_now(-older_than_s), OUTBOX.c.held.is_(False))
        .order_by(OUTBOX.c.id).limit(limit)
    ).all()


# --- bounding a transaction's hold on its locks -------------------------------------------------

# For the rest of the transaction (set_config's `true`: SET LOCAL): end the session if it sits idle in
# the transaction longer than :idle ms, and a statement (a lock wait included) after :statement ms.
_BOUND_HOLD = text("SELECT set_config('idle_in_transaction_session_timeout', :idle, true), "
                   "set_config('statement_timeout', :statement, true)")


def bound_hold(session: Session, idle_ms: int, statement_ms: int) -> None:
    """Bound how long the rest of this transaction may hold its locks while its client does not
    answer, and how long one of its statements may run (PostgreSQL; nothing on SQLite, where one
    process holds the database)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_BOUND_HOLD, {"idle": str(idle_ms), "statement": str(statement_ms)})
