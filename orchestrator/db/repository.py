"""Every SQL statement of Switchyard, as named functions over a Session (STYLE.md: one manager module).

Status changes are guarded: ``UPDATE … WHERE status IN (allowed_from)`` with the allowed set taken
from ``orchestrator.states``; a function reports what it actually changed, and zero rows means the
change was stale or a duplicate. Callers that change a run hold its row lock (``lock_run``), taken
before any step row, so every writer locks in the same order.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ClauseElement,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    case,
    column,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import diagnosis, ids
from orchestrator.db.models import (
    ApiToken,
    Approval,
    Event,
    InboundEvent,
    MetricRollup,
    MetricWatermark,
    Outbox,
    Question,
    Run,
    Step,
    Tenant,
    WebhookDelivery,
    WebhookSecret,
    Workflow,
    WorkflowVersion,
)
from orchestrator.db.types import UTCDateTime, bucket_start, db_now, seconds_between
from orchestrator.states import RunStatus, StepStatus, run_allowed_from, step_allowed_from

LIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)
# A locked run's row as read (sqlalchemy Row with Run's columns); never an ORM object, so that only
# the guarded statements below write to it.
RunRow = Any


def now(session: Session) -> datetime:
    """The database's clock."""
    return session.execute(select(db_now())).scalar_one()


# --- tenants and tokens -------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_tenant(session: Session, tenant_id: str) -> None:
    if session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        session.flush()


def tenant_policy(session: Session, tenant_id: str) -> dict | None:
    """The tenant's policy on tool calls, as stored (None: none set)."""
    return session.execute(select(Tenant.policy).where(Tenant.id == tenant_id)).scalar_one_or_none()


def set_tenant_policy(session: Session, tenant_id: str, policy: dict) -> None:
    ensure_tenant(session, tenant_id)
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(policy=policy)
                    .execution_options(synchronize_session=False))


def create_token(session: Session, tenant_id: str, role: str, name: str = "") -> tuple[str, str]:
    """Store a new token's hash and return (token id, the token itself, shown only now)."""
    ensure_tenant(session, tenant_id)
    token = "sy_" + secrets.token_urlsafe(32)
    token_id = ids.new_id("tok")
    session.add(ApiToken(id=token_id, tenant_id=tenant_id, role=role, name=name, token_hash=hash_token(token)))
    session.flush()
    return token_id, token


def find_token(session: Session, token: str) -> ApiToken | None:
    """The live (not revoked) token with this value, or None."""
    return session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()


def get_token(session: Session, tenant_id: str, token_id: str) -> ApiToken | None:
    return session.execute(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.tenant_id == tenant_id)
    ).scalar_one_or_none()


def list_tokens(session: Session, tenant_id: str | None) -> Sequence[ApiToken]:
    """The tokens of a tenant (every tenant's with None), oldest first, revoked ones included."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    return session.execute(query).scalars().all()


def revoke_token(session: Session, tenant_id: str | None, token_id: str) -> ApiToken | None:
    """Revoke a token (of this tenant, or of any with None); None if there is no such token.

    Revoking twice keeps the first time. The token answers 401 from the commit on: find_token reads
    revoked_at on every request.
    """
    query = select(ApiToken).where(ApiToken.id == token_id).with_for_update()
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    token = session.execute(query).scalar_one_or_none()
    if token is not None and token.revoked_at is None:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=db_now())
                        .execution_options(synchronize_session=False))
        session.refresh(token)
    return token


# --- workflows ----------------------------------------------------------------------------------


def publish_workflow(
    session: Session, tenant_id: str, workflow_id: str, name: str, kind: str, definition: dict
) -> WorkflowVersion:
    """Append a new immutable version; the workflow row is locked so versions stay dense."""
    ensure_tenant(session, tenant_id)
    workflow = session.execute(
        select(Workflow).where(Workflow.tenant_id == tenant_id, Workflow.id == workflow_id).with_for_update()
    ).scalar_one_or_none()
    if workflow is None:
        workflow = Workflow(tenant_id=tenant_id, id=workflow_id, name=name, kind=kind, latest_version=1)
        session.add(workflow)
    else:
        workflow.latest_version += 1
        workflow.name, workflow.kind, workflow.updated_at = name, kind, db_now()
    session.flush()
    version = WorkflowVersion(
        tenant_id=tenant_id, workflow_id=workflow_id, version=workflow.latest_version, definition=definition
    )
    session.add(version)
    session.flush()
    return version


def list_workflows(session: Session, tenant_id: str) -> Sequence[Workflow]:
    return session.execute(select(Workflow).where(Workflow.tenant_id == tenant_id).order_by(Workflow.id)).scalars().all()


def get_workflow(session: Session, tenant_id: str, workflow_id: str) -> Workflow | None:
    return session.get(Workflow, (tenant_id, workflow_id))


def list_versions(session: Session, tenant_id: str, workflow_id: str) -> Sequence[WorkflowVersion]:
    return (
        session.execute(
            select(WorkflowVersion)
            .where(WorkflowVersion.tenant_id == tenant_id, WorkflowVersion.workflow_id == workflow_id)
            .order_by(WorkflowVersion.version)
        )
        .scalars()
        .all()
    )


def get_version(session: Session, tenant_id: str, workflow_id: str, version: int) -> WorkflowVersion | None:
    return session.get(WorkflowVersion, (tenant_id, workflow_id, version))


def get_definitions(session: Session, keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], dict]:
    """Definitions of several (tenant, workflow, version) at once."""
    keys = list(set(keys))
    if not keys:
        return {}
    cols = (WorkflowVersion.tenant_id, WorkflowVersion.workflow_id, WorkflowVersion.version)
    rows = session.execute(select(*cols, WorkflowVersion.definition).where(tuple_(*cols).in_(keys))).all()
    return {(r[0], r[1], r[2]): r[3] for r in rows}


# --- runs: reads and creation -------------------------------------------------------------------


def find_run_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Run | None:
    return session.execute(
        select(Run).where(Run.tenant_id == tenant_id, Run.idempotency_key == key)
    ).scalar_one_or_none()


def insert_run(session: Session, run: Run, steps: list[Step], events: list[dict]) -> Run:
    """Insert a run with its steps and first events (run.last_seq is set from the events)."""
    run.last_seq = len(events)
    session.add(run)
    session.flush()
    session.add_all(steps)
    rows = [dict(run_id=run.id, seq=i + 1, **e) for i, e in enumerate(events)]
    _insert_events(session, rows)
    session.flush()
    _stage_written(session, run, rows, previous_status=None, status=run.status, waiting_on=None, status_changed=True)
    return run


def get_run(session: Session, tenant_id: str, run_id: str) -> Run | None:
    return session.execute(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id)).scalar_one_or_none()


def list_runs(
    session: Session,
    tenant_id: str,
    status: str | None,
    workflow_id: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> Sequence[Run]:
    """Newest first, keyset-paginated on (created_at, id) so any page costs one index range scan."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if status:
        query = query.where(Run.status == status)
    if workflow_id:
        query = query.where(Run.workflow_id == workflow_id)
    if before:
        created_at, run_id = before
        query = query.where(
            or_(Run.created_at < created_at, and_(Run.created_at == created_at, Run.id < run_id))
        )
    return session.execute(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)).scalars().all()


def run_steps(session: Session, run_id: str) -> Sequence[Step]:
    return session.execute(select(Step).where(Step.run_id == run_id).order_by(Step.position)).scalars().all()


def run_status(session: Session, run_id: str) -> str | None:
    return session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()


RUN_STATUS_EVENTS = ("run_created", "run_started", "run_waiting", "run_resumed", "run_running", "run_paused", "run_succeeded",
                     "run_failed", "run_cancelled", "run_retried")


def run_status_events(session: Session, tenant_id: str, after: datetime, limit: int) -> list[dict]:
    """The tenant's run-level events written after ``after``, oldest first, with each run's status now.

    Only the embedded broker's tenant stream reads this (it has no pub/sub); it scans the event log.
    """
    rows = session.execute(
        select(Event.run_id, Event.seq, Event.type, Event.created_at, Run.workflow_id, Run.status, Run.waiting_on)
        .join(Run, Run.id == Event.run_id)
        .where(Run.tenant_id == tenant_id, Event.type.in_(RUN_STATUS_EVENTS), Event.created_at > after)
        .order_by(Event.created_at, Event.seq).limit(limit)
    ).all()
    return [{"run_id": r.run_id, "workflow_id": r.workflow_id, "status": r.status, "previous_status": None,
             "waiting_on": r.waiting_on, "seq": r.seq, "type": r.type, "created_at": r.created_at} for r in rows]


def run_events(session: Session, run_id: str, after: int, limit: int) -> Sequence[Event]:
    return (
        session.execute(
            select(Event).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq).limit(limit)
        )
        .scalars()
        .all()
    )


def succeeded_outputs(session: Session, run_id: str) -> dict[str, Any]:
    rows = session.execute(
        select(Step.step_id, Step.output).where(Step.run_id == run_id, Step.status == StepStatus.SUCCEEDED)
    ).all()
    return {step_id: output for step_id, output in rows}


# --- changing a locked run ----------------------------------------------------------------------


RUNS, STEPS, EVENTS = Run.__table__, Step.__table__, Event.__table__


# Statements on every step's path are built once (with bind parameters): building one costs about
# as much as a round trip to the database.
_LOCK_RUN = select(RUNS).where(RUNS.c.id == bindparam("run_id")).with_for_update(of=RUNS)
_LOCK_RUN_WITH_TENANT_POLICY = _LOCK_RUN.add_columns(
    select(Tenant.policy).where(Tenant.id == RUNS.c.tenant_id).scalar_subquery().label("tenant_policy")
)
_OTHER_STEPS = STEPS.alias("other_steps")


def _others_succeeded(run_id):
    """Every step of the run ``run_id`` (an SQL expression) but ``:step_id`` succeeded."""
    return ~exists().where(_OTHER_STEPS.c.run_id == run_id, _OTHER_STEPS.c.step_id != bindparam("step_id"),
                           _OTHER_STEPS.c.status != StepStatus.SUCCEEDED.value)


# The run's columns the worker's path reads (an outcome; with _CLAIM_RUN_COLUMNS, a claim), not all
# of them: every column of a result costs the client more than its share of the statement.
_OUTCOME_RUN_COLUMNS = ("id", "tenant_id", "workflow_id", "workflow_version", "status", "waiting_on", "usage",
                        "last_seq", "risk_level")
_CLAIM_RUN_COLUMNS = (*_OUTCOME_RUN_COLUMNS, "input", "attempt", "limits")
_LOCK_RUN_WITH_STEP = (
    select(
        *(RUNS.c[name] for name in _OUTCOME_RUN_COLUMNS),
        STEPS.c.type.label("step_type"), STEPS.c.status.label("step_status"),
        STEPS.c.attempt.label("step_attempt"), STEPS.c.max_attempts, STEPS.c.queue.label("step_queue"),
        (STEPS.c.due_at <= db_now()).label("step_due"), (STEPS.c.lease_expires_at < db_now()).label("step_expired"),
        STEPS.c.waiting_on.label("step_waiting_on"), STEPS.c.policy.label("step_policy"),
        # A hint only (this statement's snapshot predates the lock): every other step succeeded.
        _others_succeeded(RUNS.c.id).label("others_succeeded"),
    )
    .join(STEPS, and_(STEPS.c.run_id == RUNS.c.id, STEPS.c.step_id == bindparam("step_id")))
    .where(RUNS.c.id == bindparam("run_id"))
    .with_for_update(of=RUNS)
)


def lock_run(session: Session, run_id: str, *, with_tenant_policy: bool = False) -> RunRow | None:
    """Lock a run's row for this transaction (waiting for other writers) and return it; with
    ``with_tenant_policy`` the row also carries its tenant's stored policy as ``tenant_policy``
    (read in the same round trip: a worker's claim needs both)."""
    query = _LOCK_RUN_WITH_TENANT_POLICY if with_tenant_policy else _LOCK_RUN
    return session.execute(query, {"run_id": run_id}).one_or_none()


def lock_run_with_step(session: Session, run_id: str, step_id: str) -> tuple[RunRow, StepView, list | None] | None:
    """Lock a run's row and read one of its steps in one round trip: (run, the step's view, the
    step's recorded policy decisions); None if there is no such step. The run carries the columns
    the outcome writer reads (_OUTCOME_RUN_COLUMNS), not all of them. The outcome writer's common
    case needs no other step of the run."""
    row = session.execute(_LOCK_RUN_WITH_STEP, {"run_id": run_id, "step_id": step_id}).one_or_none()
    if row is None:
        return None
    view = StepView(step_id, row.step_type, StepStatus(row.step_status), row.step_attempt, row.max_attempts,
                    row.step_queue, bool(row.step_due), bool(row.step_expired), row.step_waiting_on)
    return row, view, row.step_policy


@dataclass
class Claimed:
    """What ``lock_run_and_claim`` found and did: the run as locked (with ``tenant_policy``; on
    PostgreSQL only the columns a claim reads, _CLAIM_RUN_COLUMNS) and, if the step was claimed, its
    checkpoint."""

    run: RunRow
    claimed: bool
    checkpoint: dict | None = None


CLAIMABLE_RUN = (RunStatus.RUNNING, RunStatus.WAITING)


def _sql_list(statuses: Iterable[StepStatus | RunStatus]) -> str:
    """Statuses as an SQL list of literals (they are enum values, never input)."""
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


# The claim on PostgreSQL, in one statement: lock the run, move the step queued -> running at this
# attempt if the run is running or waiting, bump the run's last_seq and append `step_started`.
# `run` is evaluated first (the UPDATE of steps reads it), so the run's row is locked before the
# step's, the order every writer keeps. The run's columns come from the locked row as it was before
# the statement's own changes.
_CLAIM_PG = text("""
WITH run AS (
    SELECT * FROM runs WHERE id = :run_id FOR UPDATE
), claimed AS (
    UPDATE steps SET status = 'running', started_at = clock_timestamp(), worker = :worker,
        lease_expires_at = clock_timestamp() + make_interval(secs => :lease_s)
    WHERE run_id = :run_id AND step_id = :step_id AND attempt = :attempt AND status IN ({from_steps})
      AND EXISTS (SELECT 1 FROM run WHERE status IN ({from_runs}))
    RETURNING checkpoint
), bumped AS (
    UPDATE runs SET last_seq = runs.last_seq + 1 FROM claimed WHERE runs.id = :run_id RETURNING runs.last_seq
), started AS (
    INSERT INTO events (run_id, seq, type, step_id, attempt, data, created_at)
    SELECT :run_id, last_seq, 'step_started', :step_id, :attempt, :data, clock_timestamp() FROM bumped
    RETURNING seq, created_at
)
SELECT {run_columns}, (SELECT policy FROM tenants WHERE tenants.id = run.tenant_id) AS tenant_policy,
       claimed.checkpoint AS claimed_checkpoint, started.seq AS started_seq, started.created_at AS started_created_at
FROM run LEFT JOIN claimed ON true LEFT JOIN started ON true
""".format(
    run_columns=", ".join(f"run.{name}" for name in _CLAIM_RUN_COLUMNS),
    # The guards' allowed sets are constants of the transition table: written into the statement
    # (an expanding parameter is rewritten into the SQL on every call).
    from_steps=_sql_list(step_allowed_from(StepStatus.RUNNING) & {StepStatus.QUEUED}),
    from_runs=_sql_list(CLAIMABLE_RUN),
)).bindparams(bindparam("data", type_=postgresql.JSONB)).columns(started_created_at=UTCDateTime())


def lock_run_and_claim(session: Session, run_id: str, step_id: str, attempt: int, worker: str,
                       lease_s: float) -> Claimed | None:
    """Lock the run and, if it is running or waiting, claim the step: ``queued → running`` for exactly
    this attempt, with the worker's name, a lease and its ``step_started`` event. None if there is no
    such run; ``claimed`` False if the guard matched nothing (a stale or duplicate delivery, or a run
    that is not running)."""
    data = {"worker": worker}
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(_CLAIM_PG, dict(
            run_id=run_id, step_id=step_id, attempt=attempt, worker=worker, lease_s=float(lease_s), data=data,
        )).one_or_none()
        if row is None:
            return None
        if row.started_seq is None:
            return Claimed(row, False)
        event = dict(run_id=run_id, seq=row.started_seq, type="step_started", step_id=step_id, attempt=attempt,
                     data=data, created_at=row.started_created_at)
        _stage_written(session, row, [event], previous_status=None, status=row.status,
                       waiting_on=row.waiting_on, status_changed=False)
        return Claimed(row, True, row.claimed_checkpoint)
    run = lock_run(session, run_id, with_tenant_policy=True)
    if run is None:
        return None
    claimed = claim_step(session, run_id, step_id, attempt, worker, lease_s) if run.status in CLAIMABLE_RUN else None
    if claimed is None:
        return Claimed(run, False)
    changes = RunChanges(run)
    changes.event("step_started", step_id, attempt, **data)
    apply_run_changes(session, changes)
    return Claimed(run, True, claimed.checkpoint)


def claim_step(session: Session, run_id: str, step_id: str, attempt: int, worker: str, lease_s: float) -> Any:
    """``queued → running`` for exactly this attempt, with the worker's name and a lease; returns the
    step's checkpoint row (``.checkpoint``), or None if the guard matched nothing (stale or duplicate)."""
    allowed = step_allowed_from(StepStatus.RUNNING) & {StepStatus.QUEUED}
    return session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id == step_id, STEPS.c.attempt == attempt,
               STEPS.c.status.in_([s.value for s in allowed]))
        .values(status=StepStatus.RUNNING.value, started_at=db_now(), worker=worker,
                lease_expires_at=db_now(lease_s))
        .returning(STEPS.c.checkpoint)
    ).one_or_none()


# The scheduler's statements are built once: building a statement costs more than running it here.
_RUNS_WITH_WORK = (
    select(Run.__table__)
    .where(Run.__table__.c.has_work.is_(True))
    .order_by(Run.__table__.c.created_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# The same, deleting outbox rows on the way (PostgreSQL runs a DELETE in a WITH even if unreferenced).
_RUNS_WITH_WORK_FORGETTING_OUTBOX = _RUNS_WITH_WORK.add_cte(
    delete(Outbox.__table__)
    .where(Outbox.__table__.c.id == any_(bindparam("published", type_=postgresql.ARRAY(Integer))))
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


@dataclass(slots=True)
class StepView:
    """A step as the scheduler and the outcome writer see it, with the clock checks done in SQL.

    A plain value, not an ORM object: changing it never writes anything by itself.
    """

    step_id: str
    type: str
    status: StepStatus
    attempt: int
    max_attempts: int
    queue: str
    due: bool
    lease_expired: bool
    waiting_on: str | None = None


def _steps_for_update_query(of_runs):
    steps, clock = Step.__table__.c, db_now()
    return (
        select(steps.run_id, steps.step_id, steps.type, steps.status, steps.attempt, steps.max_attempts, steps.queue,
               steps.due_at <= clock, steps.lease_expires_at < clock, steps.waiting_on)
        .where(of_runs)
        .order_by(steps.run_id, steps.position)
    )


# On PostgreSQL the run ids go as one array: psycopg parses a statement of more than 50 parameters
# anew on every call, which costs more than the query for a batch of 200 runs.
_STEPS_FOR_UPDATE = {
    "postgresql": _steps_for_update_query(
        Step.__table__.c.run_id == any_(bindparam("run_ids", type_=postgresql.ARRAY(String)))
    ),
    "sqlite": _steps_for_update_query(Step.__table__.c.run_id.in_(bindparam("run_ids", expanding=True))),
}
_STEP_STATUSES = {status.value: status for status in StepStatus}


def steps_for_update(session: Session, run_ids: Sequence[str]) -> dict[str, list[StepView]]:
    """The steps of locked runs, with `due` (due_at passed) and `lease_expired` computed by the database."""
    result: dict[str, list[StepView]] = {run_id: [] for run_id in run_ids}
    statuses = _STEP_STATUSES
    query = _STEPS_FOR_UPDATE[session.get_bind().dialect.name]
    for run_id, step_id, type_, status, attempt, max_attempts, queue, due, expired, waiting_on in session.execute(
        query, {"run_ids": list(run_ids)}
    ).all():
        result[run_id].append(StepView(step_id, type_, statuses[status], attempt, max_attempts, queue, bool(due),
                                       bool(expired), waiting_on))
    return result


@dataclass(frozen=True)
class StepMove:
    """One step's guarded move (as update_steps makes it, at ``attempt``), left for apply_run_changes to
    write first: on PostgreSQL in the run's own statement."""

    step_id: str
    target: StepStatus
    only_from: frozenset[StepStatus]
    attempt: int
    values: dict[str, Any]


@dataclass
class RunChanges:
    """What one transaction does to one locked run: its new status and values, and its events; and
    optionally the move of one of its steps, which the rest is written only after (``step_move``)."""

    run: RunRow
    events: list[dict] = field(default_factory=list)
    run_values: dict[str, Any] = field(default_factory=dict)
    run_target: RunStatus | None = None
    step_move: StepMove | None = None

    def event(self, type_: str, step_id: str | None = None, attempt: int | None = None, **data: Any) -> None:
        self.events.append({"type": type_, "step_id": step_id, "attempt": attempt, "data": data})


def update_steps(
    session: Session,
    run_id: str,
    step_ids: Sequence[str],
    target: StepStatus,
    *,
    only_from: Iterable[StepStatus] | None = None,
    at_attempt: int | None = None,
    **values: Any,
) -> list[str]:
    """Move steps to ``target`` where the table allows it; return the ids actually changed.

    ``only_from`` narrows the table's allowed set; ``at_attempt`` also requires that attempt number,
    so a report from an older attempt matches nothing.
    """
    moved = move_steps_many(session, [(run_id, s) for s in step_ids], target, only_from=only_from,
                            at_attempt=at_attempt, **values)
    return [s for s in step_ids if (run_id, s) in moved]


def move_steps_many(
    session: Session,
    keys: Sequence[tuple[str, str]],
    target: StepStatus,
    *,
    only_from: Iterable[StepStatus] | None = None,
    at_attempt: int | None = None,
    **values: Any,
) -> set[tuple[str, str]]:
    """update_steps for the steps of many runs, in one statement: move the steps ``keys`` (run id,
    step id) to ``target`` where the table (narrowed to ``only_from``) allows it; return the keys
    actually changed."""
    if not keys:
        return set()
    allowed = step_allowed_from(target, only_from)
    dialect = session.get_bind().dialect.name
    params: dict[str, Any] = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    params["at_attempt"] = at_attempt
    if dialect == "postgresql":
        params["run_ids"], params["step_ids"] = [k[0] for k in keys], [k[1] for k in keys]
    else:
        params["keys"] = [tuple(k) for k in keys]
    # Built once per shape (it is on every step's path, and building one costs about a round trip):
    # plain values go as parameters; NOW and NEXT_ATTEMPT are the expressions kept in it.
    shape = _shape(values)
    key = (dialect, target, allowed, at_attempt is not None, shape)
    query = _MOVE_STEPS.get(key) if shape is not None else None
    if query is None:
        query = _move_steps_statement(dialect, target, allowed, at_attempt is not None, values)
        if shape is not None:
            _MOVE_STEPS[key] = query
    return {(run_id, step_id) for run_id, step_id in session.execute(query, params)}


# The database clock and the next attempt's number as shared expressions: a statement that sets a
# column to one of them can be built once (see _shape).
NOW = db_now()
NEXT_ATTEMPT = STEPS.c.attempt + 1
_SHARED_EXPRESSIONS = (NOW, NEXT_ATTEMPT)


def _shape(values: dict[str, Any]) -> tuple | None:
    """The columns a statement sets and which shared expression each is set to (None: a parameter),
    or None if one is set to an expression of its own (such a statement cannot be reused)."""
    shape = []
    for key, value in values.items():
        shared = None
        if isinstance(value, ClauseElement):
            shared = next((i for i, e in enumerate(_SHARED_EXPRESSIONS) if value is e), None)
            if shared is None:
                return None
        shape.append((key, shared))
    return tuple(sorted(shape, key=lambda column: column[0]))


_MOVE_STEPS: dict[tuple, Any] = {}
# On PostgreSQL the keys go as two arrays: the statement's text is the same for any number of keys
# (psycopg parses a statement of more than 50 parameters anew on every call).
_KEYS = (
    func.unnest(bindparam("run_ids", type_=postgresql.ARRAY(String)),
                bindparam("step_ids", type_=postgresql.ARRAY(String)))
    .table_valued(column("run_id", String), column("step_id", String))
    .render_derived(name="keys")
)


def _guarded_step_update(target: StepStatus, allowed: Iterable[StepStatus], values: dict, prefix: str, *where):
    """The guarded UPDATE of steps (``where``, and a status in ``allowed``) to ``target``: plain values
    are bind parameters named ``<prefix><column>``, SQL expressions are kept as they are."""
    new = {key: value if isinstance(value, ClauseElement) else bindparam(f"{prefix}{key}", type_=STEPS.c[key].type)
           for key, value in values.items()}
    return (
        update(STEPS)
        .where(*where, or_(*(STEPS.c.status == status.value for status in sorted(allowed))))
        .values(status=target.value, **new)
    )


def _move_steps_statement(dialect: str, target: StepStatus, allowed: frozenset[StepStatus], at_attempt: bool,
                          values: dict):
    of_keys = (
        tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(select(_KEYS.c.run_id, _KEYS.c.step_id))
        if dialect == "postgresql"
        else tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(bindparam("keys", expanding=True))
    )
    at = [STEPS.c.attempt == bindparam("at_attempt")] if at_attempt else []
    return _guarded_step_update(target, allowed, values, "new_", of_keys, *at).returning(STEPS.c.run_id,
                                                                                        STEPS.c.step_id)


# Where apply_run_changes leaves what it wrote, for orchestrator.streams to publish after the commit.
WRITTEN_EVENTS = "switchyard.written_events"


class StaleRunState(Exception):
    """The run's status changed under a writer that held its lock: a bug, so the transaction is undone."""


def apply_run_changes(session: Session, changes: RunChanges) -> bool:
    """Write the step's move (``changes.step_move``, if any), then the run's new status (guarded), its
    other values and its events. Returns False, having written nothing, if the step's guard matched
    nothing; True otherwise.

    Raises StaleRunState if the run's guard matched nothing, so the caller's transaction rolls back whole.
    """
    prepared = _prepare(changes)
    run, move = changes.run, changes.step_move
    with_events = prepared is not None and bool(prepared[2]) and session.get_bind().dialect.name == "postgresql"
    # The step's move goes in the run's statement if the run's update cannot miss (no status guard, or
    # one its locked status passes), so that an empty result can only mean the step's guard matched
    # nothing: one round trip less.
    folded = move is not None and with_events and (prepared[0] is None or RunStatus(run.status) in prepared[0])
    if move is not None and not folded and not update_steps(
        session, run.id, [move.step_id], move.target, only_from=move.only_from, at_attempt=move.attempt, **move.values
    ):
        return False
    if prepared is None:
        return True
    guard, values, rows = prepared
    query, params = _run_update(guard, values, with_events, move if folded else None)
    params["of_run"] = run.id
    if with_events:
        # One round trip for both: every transaction on a step's path ends with this.
        params["new_events"] = [{k: row[k] for k in _RUN_EVENT_COLUMNS} for row in rows]
        created = dict(session.execute(query, params).all())
        if folded and not created:
            return False  # the step did not move, so neither did anything else
        for row in rows:
            row["created_at"] = created.get(row["seq"])
        moved = bool(created)
    else:
        moved = session.execute(query, params).rowcount == 1
        if moved:
            _insert_events(session, rows)
    if not moved:
        raise StaleRunState(f"run {run.id} is no longer {run.status!r}; cannot move it to {changes.run_target}")
    _stage(session, run, values, rows)
    return True


def _prepare(changes: RunChanges) -> tuple[frozenset[RunStatus] | None, dict[str, Any], list[dict]] | None:
    """What writing ``changes`` takes: the status guard (None: the status stays), the run's new
    values (status and last_seq included) and the event rows; None if nothing changes."""
    run, values, guard = changes.run, dict(changes.run_values), None
    if changes.run_target is not None and changes.run_target != run.status:
        values["status"] = changes.run_target.value
        guard = run_allowed_from(changes.run_target)
    if changes.events:
        values["last_seq"] = run.last_seq + len(changes.events)
    if not values:
        return None
    rows = [dict(run_id=run.id, seq=run.last_seq + i + 1, **e) for i, e in enumerate(changes.events)]
    return guard, values, rows


def _stage(session: Session, run, values: dict[str, Any], rows: list[dict]) -> None:
    """Leave the rows written to the run's log for the publisher, with the run's status after them."""
    if rows:
        status = values.get("status")
        _stage_written(session, run, rows, previous_status=run.status if status else None, status=status or run.status,
                       waiting_on=values.get("waiting_on", run.waiting_on), status_changed=status is not None)


_RUN_UPDATES: dict[tuple, Any] = {}


def _run_update(guard: frozenset[RunStatus] | None, values: dict[str, Any], with_events: bool,
                step_move: StepMove | None = None) -> tuple[Any, dict]:
    """The run's guarded UPDATE (on PostgreSQL ``with_events``: and its events' INSERT, in one
    statement; with ``step_move`` too: the step's guarded UPDATE first, and the rest only if it
    matched) and its parameters. Built once per shape, like update_steps' statements; values that
    are SQL expressions of their own (not NOW or NEXT_ATTEMPT) make a statement for this call only."""
    params = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    shape, step_key = _shape(values), None
    if step_move is not None:
        params.update({f"step_{k}": v for k, v in step_move.values.items() if not isinstance(v, ClauseElement)})
        params.update(of_step=step_move.step_id, step_attempt=step_move.attempt)
        step_shape = _shape(step_move.values)
        step_key = (step_move.target, step_move.only_from, step_shape)
        shape = shape if step_shape is not None else None
    key = (guard, with_events, shape, step_key)
    query = _RUN_UPDATES.get(key) if shape is not None else None
    if query is not None:
        return query, params
    new = {key: value if isinstance(value, ClauseElement) else bindparam(f"new_{key}", type_=RUNS.c[key].type)
           for key, value in values.items()}
    query = update(RUNS).where(RUNS.c.id == bindparam("of_run")).values(**new)
    if guard is not None:
        # OR, not IN: an IN list is an expanding parameter, which executemany does not take.
        query = query.where(or_(*(RUNS.c.status == s.value for s in sorted(guard))))
    if step_move is not None:
        query = query.where(exists(select(_moved_step(step_move).c.step_id)))
    if with_events:
        moved = query.returning(RUNS.c.id).cte("moved_run")
        query = insert(EVENTS).from_select(
            ["run_id", *_RUN_EVENT_COLUMNS],
            select(moved.c.id, *(_NEW_EVENTS.c[name] for name in _RUN_EVENT_COLUMNS)).select_from(moved)
            .join(_NEW_EVENTS, true()),
        ).returning(EVENTS.c.seq, EVENTS.c.created_at)
    if shape is not None:
        _RUN_UPDATES[key] = query
    return query, params


def _moved_step(move: StepMove):
    """The step's guarded move as a CTE of the run's statement (parameters ``of_step``,
    ``step_attempt`` and ``step_<column>``)."""
    return (
        _guarded_step_update(move.target, step_allowed_from(move.target, move.only_from), move.values, "step_",
                             STEPS.c.run_id == bindparam("of_run"), STEPS.c.step_id == bindparam("of_step"),
                             STEPS.c.attempt == bindparam("step_attempt"))
        .returning(STEPS.c.step_id)
        .cte("moved_step")
    )


_EVENT_COLUMNS = ("run_id", "seq", "type", "step_id", "attempt", "data")
_RUN_EVENT_COLUMNS = _EVENT_COLUMNS[1:]  # a run's own events: run_id comes from its update
# The events as one JSON parameter, so the statement's text (and SQLAlchemy's compiled cache entry)
# is the same whatever the number of events.
_NEW_EVENTS = (
    func.jsonb_to_recordset(bindparam("new_events", type_=postgresql.JSONB))
    .table_valued(*(column(name, EVENTS.c[name].type) for name in _RUN_EVENT_COLUMNS))
    .render_derived(name="new_events", with_types=True)
)


def _stage_written(session: Session, run, rows: list[dict], previous_status: str | None, status: str,
                   waiting_on: str | None, status_changed: bool) -> None:
    """Leave what this transaction wrote to a run's log for the publisher (orchestrator.streams);
    ``status_changed`` for a new run or one whose status the transaction changed."""
    session.info.setdefault(WRITTEN_EVENTS, []).append(
        {"tenant_id": run.tenant_id, "run_id": run.id, "workflow_id": run.workflow_id,
         "previous_status": previous_status, "status": status, "waiting_on": waiting_on,
         "status_changed": status_changed, "events": rows}
    )


# --- the scheduler's pass: the guarded writes of many locked runs at once -------------------------


def outputs_if_others_succeeded(session: Session, run_id: str, step_id: str,
                                sinks: Sequence[str]) -> dict[str, Any] | None:
    """The outputs of the run's steps ``sinks`` other than ``step_id`` if every step of the run but
    ``step_id`` succeeded, else None."""
    if not session.execute(_OTHERS_SUCCEEDED, {"run_id": run_id, "step_id": step_id}).scalar_one():
        return None
    outputs = step_outputs(session, [(run_id, s) for s in sinks if s != step_id])
    return {s: output for (_, s), output in outputs.items()}


_OTHERS_SUCCEEDED = select(_others_succeeded(bindparam("run_id")))


def step_outputs(session: Session, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The outputs of the succeeded steps among ``keys`` (run id, step id), by key."""
    if not keys:
        return {}
    steps = Step.__table__.c
    rows = session.execute(
        select(steps.run_id, steps.step_id, steps.output)
        .where(tuple_(steps.run_id, steps.step_id).in_(keys), steps.status == StepStatus.SUCCEEDED.value)
    )
    return {(run_id, step_id): output for run_id, step_id, output in rows}


def apply_many_run_changes(session: Session, many: Sequence[RunChanges]) -> None:
    """apply_run_changes for many locked runs: the runs whose changes set the same columns (with the
    same SQL expressions) and take the same guard are written by one executemany, and the events of
    all of them are inserted by one statement.

    Raises StaleRunState if a guard matched nothing, so the caller's transaction rolls back whole.
    """
    if len(many) == 1:
        # One run (a chain's every pass): its update and its events in one statement on PostgreSQL.
        apply_run_changes(session, many[0])
        return
    groups: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
    written: list[tuple[RunRow, dict[str, Any], list[dict]]] = []
    for changes in many:
        prepared = _prepare(changes)
        if prepared is None:
            continue
        guard, values, rows = prepared
        # Runs of one shape of change get the same (cached) statement: one executemany for them all.
        query, params = _run_update(guard, values, with_events=False)
        groups.setdefault(id(query), (query, []))[1].append({"of_run": changes.run.id, **params})
        written.append((changes.run, values, rows))
    for query, params in groups.values():
        if session.execute(query, params).rowcount != len(params):
            stale = [p["of_run"] for p in params]
            raise StaleRunState(f"one of runs {stale} is no longer in the status its changes were decided from")
    _insert_events(session, [row for _, _, rows in written for row in rows])
    for run, values, rows in written:
        _stage(session, run, values, rows)




def _insert_events(session: Session, rows: list[dict]) -> None:
    """Append event rows (run_id, seq, …), each with the database's created_at, in one statement
    however many rows (an ORM bulk insert starts a new one at every row whose None values differ
    from the previous row's). On PostgreSQL the rows go as one array per column: psycopg parses a
    statement of many parameters anew on every call, which costs more than the insert itself."""
    if not rows:
        return
    events = Event.__table__
    if session.get_bind().dialect.name == "postgresql":
        written = session.execute(_INSERT_EVENT_ARRAYS, {c: [r[c] for r in rows] for c in _EVENT_COLUMNS}).all()
        created = {(run_id, seq): created_at for run_id, seq, created_at in written}
        for row in rows:
            row["created_at"] = created[(row["run_id"], row["seq"])]
        return
    written = session.execute(
        insert(events).returning(events.c.created_at, sort_by_parameter_order=True),
        [{c: r[c] for c in _EVENT_COLUMNS} for r in rows],
    ).scalars().all()
    for row, created_at in zip(rows, written, strict=True):
        row["created_at"] = created_at


def _insert_event_arrays():
    events = Event.__table__
    arrays = func.unnest(
        *(bindparam(c, type_=postgresql.ARRAY(events.c[c].type)) for c in _EVENT_COLUMNS)
    ).table_valued(*_EVENT_COLUMNS).render_derived(name="new_event")
    return (
        insert(events)
        .from_select([*_EVENT_COLUMNS, "created_at"], select(*(arrays.c[c] for c in _EVENT_COLUMNS), db_now()))
        .returning(events.c.run_id, events.c.seq, events.c.created_at)
    )


_INSERT_EVENT_ARRAYS = _insert_event_arrays()


# --- the worker's side of an attempt ------------------------------------------------------------


def extend_lease(session: Session, run_id: str, step_id: str, attempt: int, lease_s: float) -> bool:
    """Extend a running attempt's lease; False if the attempt is no longer running or must stop."""
    updated = session.execute(
        update(Step)
        .where(
            Step.run_id == run_id,
            Step.step_id == step_id,
            Step.attempt == attempt,
            Step.status == StepStatus.RUNNING,
            Step.cancel_requested.is_(False),
        )
        .values(lease_expires_at=db_now(lease_s))
        .execution_options(synchronize_session=False)
    ).rowcount
    return updated == 1


# --- the scheduler's sweep ----------------------------------------------------------------------


def flag_runs_with_due_steps(session: Session) -> int:
    """Flag runs whose retry/timer is due or whose running step's lease expired; returns how many."""
    clock = db_now()
    due = select(Step.run_id).where(
        or_(
            Step.due_at <= clock,
            and_(Step.status == StepStatus.RUNNING, Step.lease_expires_at < clock),
        )
    )
    return session.execute(
        update(Run)
        .where(Run.id.in_(due), Run.has_work.is_(False))
        .values(has_work=True)
        .execution_options(synchronize_session=False)
    ).rowcount


# The runs whose steps' due times the scheduler fires (a paused run's retry waits for its resume).
FIRING_RUN = (RunStatus.RUNNING, RunStatus.WAITING)


def seconds_until_next_due(session: Session, passed_within_s: float) -> float | None:
    """Seconds until the earliest retry, timer or event timeout of a running or waiting run comes due:
    0 or less for one that passed in the last ``passed_within_s`` seconds (a due time can pass before
    the pass that wrote it reads it back, on a busy machine); None if there is none. An older one is
    left to the sweep, so a due time that stays cannot make the loop spin."""
    clock = db_now()
    return session.execute(
        select(seconds_between(clock, func.min(Step.due_at)))
        .join(Run, Run.id == Step.run_id)
        .where(Step.due_at > db_now(-passed_within_s), Run.status.in_([s.value for s in FIRING_RUN]))
    ).scalar_one_or_none()


def queued_steps(session: Session, attempts: Sequence[tuple[str, str, int]] | None = None) -> Sequence[Any]:
    """Every step attempt waiting in a broker queue (of ``attempts`` only, (run id, step id, attempt),
    if given), with its run's workflow version (to rebuild its message)."""
    query = (
        select(Step.run_id, Step.step_id, Step.attempt, Step.queue, Run.tenant_id, Run.workflow_id,
               Run.workflow_version)
        .join(Run, Run.id == Step.run_id)
        .where(Step.status == StepStatus.QUEUED)
    )
    if attempts is not None:
        query = query.where(tuple_(Step.run_id, Step.step_id, Step.attempt).in_(list(attempts)))
    return session.execute(query).all()


def diagnosis_facts(
    session: Session, run_id: str
) -> tuple[list[diagnosis.StepFacts], dict[str, str], dict[str, str]]:
    """What ``diagnosis.diagnose`` reads about a run: its steps (with the database clock's view of their
    leases and due times), and its pending approvals and open questions by step id."""
    clock = now(session)
    steps = []
    for step in run_steps(session, run_id):
        due = step.due_at
        steps.append(diagnosis.StepFacts(
            step_id=step.step_id, type=step.type, status=StepStatus(step.status), queue=step.queue,
            attempt=step.attempt,
            lease_expired=bool(step.lease_expires_at is not None and step.lease_expires_at < clock),
            due_in_s=(due - clock).total_seconds() if due is not None else None,
            correlation_key=step.correlation_key, waiting_on=step.waiting_on,
            queued_for_s=(clock - step.queued_at).total_seconds() if step.queued_at is not None else None,
        ))
    approvals = dict(session.execute(
        select(Approval.step_id, Approval.id).where(Approval.run_id == run_id, Approval.status == "pending")
    ).all())
    questions = dict(session.execute(
        select(Question.step_id, Question.id).where(Question.run_id == run_id, Question.status == "open")
    ).all())
    return steps, approvals, questions


def insert_outbox(session: Session, messages: list[dict]) -> list[int]:
    if not messages:
        return []
    outbox = Outbox.__table__
    return list(session.execute(insert(outbox).returning(outbox.c.id), messages).scalars())


def step_statuses(session: Session, run_id: str, step_ids: Sequence[str]) -> dict[str, StepStatus]:
    """The statuses of some of a run's steps (read now: under the run's lock, exact)."""
    rows = session.execute(
        select(STEPS.c.step_id, STEPS.c.status).where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(step_ids))
    )
    return {step_id: _STEP_STATUSES[status] for step_id, status in rows}


# The outcome writer's dispatch on PostgreSQL, in one statement: move the steps pending -> queued
# (next attempt) only if the step whose success made them ready is still running at its attempt
# (read by this statement, under the run's lock: the lock's own read may predate it), and write
# their outbox rows. The soft time limits go beside the step ids, one array each.
_QUEUE_FROM = _sql_list(step_allowed_from(StepStatus.QUEUED, [StepStatus.PENDING]))
_SUCCEED_FROM = _sql_list(step_allowed_from(StepStatus.SUCCEEDED, [StepStatus.RUNNING]))
_QUEUE_WITH_OUTBOX_PG = text(f"""
WITH moved AS (
    UPDATE steps SET status = 'queued', attempt = steps.attempt + 1, queued_at = clock_timestamp()
    FROM unnest(CAST(:step_ids AS varchar[]), CAST(:limits AS float8[])) AS next (step_id, soft_time_limit)
    WHERE steps.run_id = :run_id AND steps.step_id = next.step_id AND steps.status IN ({_QUEUE_FROM})
      AND EXISTS (SELECT 1 FROM steps AS done WHERE done.run_id = :run_id AND done.step_id = :done_step_id
                  AND done.attempt = :done_attempt AND done.status IN ({_SUCCEED_FROM}))
    RETURNING steps.run_id, steps.step_id, steps.attempt, steps.queue, next.soft_time_limit
)
INSERT INTO outbox (run_id, step_id, attempt, queue, soft_time_limit, created_at)
SELECT run_id, step_id, attempt, queue, soft_time_limit, clock_timestamp() FROM moved
RETURNING id, run_id, step_id, attempt, queue, soft_time_limit
""")
_MESSAGE_KEYS = ("run_id", "step_id", "attempt", "queue", "soft_time_limit")


def queue_steps_with_outbox(session: Session, run_id: str, soft_time_limits: dict[str, float], done_step_id: str,
                            done_attempt: int) -> list[dict]:
    """Queue the run's pending steps ``soft_time_limits`` names (their next attempt) and write their
    outbox rows, if the step ``done_step_id`` is still running at ``done_attempt``; the messages of
    the steps queued, each with its ``outbox_id``. The run must be locked by the caller."""
    step_ids = list(soft_time_limits)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_QUEUE_WITH_OUTBOX_PG, dict(
            run_id=run_id, step_ids=step_ids, limits=[float(soft_time_limits[s]) for s in step_ids],
            done_step_id=done_step_id, done_attempt=done_attempt,
        )).all()
        return [{"outbox_id": row.id, **{key: getattr(row, key) for key in _MESSAGE_KEYS}} for row in rows]
    done = session.execute(select(STEPS.c.status).where(
        STEPS.c.run_id == run_id, STEPS.c.step_id == done_step_id, STEPS.c.attempt == done_attempt)).scalar()
    if done is None or StepStatus(done) not in step_allowed_from(StepStatus.SUCCEEDED, [StepStatus.RUNNING]):
        return []
    moved = update_steps(session, run_id, step_ids, StepStatus.QUEUED, only_from=[StepStatus.PENDING],
                         attempt=NEXT_ATTEMPT, queued_at=NOW)
    if not moved:
        return []
    found = session.execute(
        select(STEPS.c.step_id, STEPS.c.attempt, STEPS.c.queue).where(STEPS.c.run_id == run_id,
                                                                       STEPS.c.step_id.in_(moved))
    ).all()
    messages = [dict(run_id=run_id, step_id=step_id, attempt=attempt, queue=queue,
                     soft_time_limit=float(soft_time_limits[step_id])) for step_id, attempt, queue in found]
    for message, outbox_id in zip(messages, insert_outbox(session, messages), strict=True):
        message["outbox_id"] = outbox_id
    return messages


def delete_outbox(session: Session, outbox_ids: Sequence[int]) -> None:
    if outbox_ids:
        outbox = Outbox.__table__
        session.execute(delete(outbox).where(outbox.c.id.in_(outbox_ids)))


def stale_outbox(session: Session, older_than_s: float, limit: int = 1000) -> Sequence[Outbox]:
    """Messages committed but not published after ``older_than_s`` (the publisher died in between)."""
    return (
        session.execute(
            select(Outbox).where(Outbox.created_at < db_now(-older_than_s)).order_by(Outbox.id).limit(limit)
        )
        .scalars()
        .all()
    )


# --- people and the outside world: approvals, questions, inbound events -------------------------


def step_checkpoint(session: Session, run_id: str, step_id: str) -> dict | None:
    return session.execute(
        select(Step.checkpoint).where(Step.run_id == run_id, Step.step_id == step_id)
    ).scalar_one_or_none()


def set_checkpoint(session: Session, run_id: str, step_id: str, checkpoint: dict | None) -> None:
    session.execute(
        update(Step).where(Step.run_id == run_id, Step.step_id == step_id)
        .values(checkpoint=checkpoint).execution_options(synchronize_session=False)
    )


def insert_approval(
    session: Session, tenant_id: str, run_id: str, step_id: str, prompt: str | None, call: dict | None = None
) -> str:
    """A new pending round for an approval step, or for a tool ``call`` a policy gated; rounds count from 1."""
    rounds = session.execute(
        select(func.count()).select_from(Approval).where(Approval.run_id == run_id, Approval.step_id == step_id)
    ).scalar_one()
    approval_id = ids.new_id("apr")
    # Cut to the column's size: a rendered prompt can be any length, and a failed insert would
    # leave the run stuck in the scheduler.
    session.add(Approval(id=approval_id, tenant_id=tenant_id, run_id=run_id, step_id=step_id,
                         round=rounds + 1, status="pending", prompt=prompt[:2000] if prompt else prompt,
                         # SQL NULL, not JSON null, for approval steps: templates look for call IS NULL.
                         **({"call": call} if call is not None else {})))
    session.flush()
    return approval_id


def get_approval(session: Session, run_id: str, approval_id: str) -> Approval | None:
    return session.execute(
        select(Approval).where(Approval.id == approval_id, Approval.run_id == run_id)
        .with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()


def decide_approval(session: Session, approval_id: str, status: str, comment: str | None, decided_by: str) -> bool:
    """pending -> a decision; False if it was already decided."""
    return session.execute(
        update(Approval).where(Approval.id == approval_id, Approval.status == "pending")
        .values(status=status, comment=comment, decided_by=decided_by, decided_at=db_now())
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def run_approvals(session: Session, run_id: str) -> Sequence[Approval]:
    """Every approval round of a run, with its decision, oldest first."""
    return session.execute(
        select(Approval).where(Approval.run_id == run_id).order_by(Approval.created_at, Approval.id)
    ).scalars().all()


def run_questions(session: Session, run_id: str) -> Sequence[Question]:
    return session.execute(
        select(Question).where(Question.run_id == run_id).order_by(Question.created_at, Question.id)
    ).scalars().all()


def list_approvals(session: Session, tenant_id: str, status: str | None, limit: int) -> Sequence[Approval]:
    query = select(Approval).where(Approval.tenant_id == tenant_id)
    if status:
        query = query.where(Approval.status == status)
    return session.execute(query.order_by(Approval.created_at.desc()).limit(limit)).scalars().all()


def pending_approvals(session: Session, run_ids: Sequence[str]) -> dict[str, list[Approval]]:
    """Pending approvals of several runs in one query."""
    result: dict[str, list[Approval]] = {run_id: [] for run_id in run_ids}
    if run_ids:
        rows = session.execute(
            select(Approval).where(Approval.run_id.in_(run_ids), Approval.status == "pending")
            .order_by(Approval.created_at)
        ).scalars()
        for approval in rows:
            result[approval.run_id].append(approval)
    return result


def latest_approval_decision(session: Session, run_id: str) -> dict | None:
    """The run's most recent decided approval, for templates (``approval.comment``)."""
    row = session.execute(
        select(Approval).where(Approval.run_id == run_id, Approval.status != "pending", Approval.decided_at.is_not(None),
                               Approval.call.is_(None))
        .order_by(Approval.decided_at.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    return {"id": row.id, "step_id": row.step_id, "status": row.status, "comment": row.comment, "round": row.round}


def insert_question(session: Session, tenant_id: str, run_id: str, step_id: str, question: str) -> str:
    question_id = ids.new_id("q")
    session.add(Question(id=question_id, tenant_id=tenant_id, run_id=run_id, step_id=step_id,
                         question=question[:10000], status="open"))
    session.flush()
    return question_id


def get_question(session: Session, run_id: str, question_id: str) -> Question | None:
    return session.execute(
        select(Question).where(Question.id == question_id, Question.run_id == run_id)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def answer_question(session: Session, question_id: str, answer: Any, answered_by: str) -> bool:
    return session.execute(
        update(Question).where(Question.id == question_id, Question.status == "open")
        .values(status="answered", answer=answer, answered_by=answered_by, answered_at=db_now())
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def list_questions(session: Session, tenant_id: str, status: str | None, limit: int) -> Sequence[Question]:
    query = select(Question).where(Question.tenant_id == tenant_id)
    if status:
        query = query.where(Question.status == status)
    return session.execute(query.order_by(Question.created_at.desc()).limit(limit)).scalars().all()


def close_open_requests(session: Session, run_id: str) -> None:
    """The run stopped: its pending approvals and open questions are cancelled."""
    session.execute(update(Approval).where(Approval.run_id == run_id, Approval.status == "pending")
                    .values(status="cancelled", decided_at=db_now()).execution_options(synchronize_session=False))
    session.execute(update(Question).where(Question.run_id == run_id, Question.status == "open")
                    .values(status="cancelled", answered_at=db_now()).execution_options(synchronize_session=False))


def insert_inbound_event(
    session: Session, tenant_id: str, key: str, name: str | None, payload: Any, keep_s: float
) -> str:
    event_id = ids.new_id("evt")
    session.execute(insert(InboundEvent).values(
        id=event_id, tenant_id=tenant_id, correlation_key=key, name=name, payload=payload, expires_at=db_now(keep_s)
    ))
    return event_id


def kept_event(session: Session, tenant_id: str, key: str, name: str | None) -> InboundEvent | None:
    """The newest unexpired event with this key (and name, if the step asks for one)."""
    query = select(InboundEvent).where(
        InboundEvent.tenant_id == tenant_id, InboundEvent.correlation_key == key, InboundEvent.expires_at > db_now()
    )
    if name:
        query = query.where(InboundEvent.name == name)
    return session.execute(query.order_by(InboundEvent.created_at.desc()).limit(1)).scalar_one_or_none()


def runs_waiting_on_key(session: Session, tenant_id: str, key: str) -> list[str]:
    """Runs of this tenant with a step waiting on ``key``."""
    return list(session.execute(
        select(Step.run_id).join(Run, Run.id == Step.run_id)
        .where(Step.correlation_key == key, Step.status == StepStatus.WAITING, Run.tenant_id == tenant_id)
        .distinct()
    ).scalars())


def step_fields(session: Session, run_id: str, step_id: str) -> Step | None:
    return session.execute(
        select(Step).where(Step.run_id == run_id, Step.step_id == step_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()


# --- monitoring: aggregates for GET /metrics and /analytics ---------------------------------------
# ``tenant_id=None`` means every tenant (the public metrics endpoint); otherwise one tenant's rows.
# The README's "Monitoring" section says which index serves each query.

DISPATCHED_TYPES = ("tool", "llm", "agent")


def _tenant_runs(query, tenant_id: str | None, join_from=None):
    if tenant_id is None:
        return query
    if join_from is not None:
        query = query.join(Run, Run.id == join_from)
    return query.where(Run.tenant_id == tenant_id)


def count_runs_by_status(
    session: Session, tenant_id: str | None, since: datetime | None = None, statuses: Iterable[str] | None = None
) -> dict[str, int]:
    """How many runs are in each status now (created at or after ``since``, in ``statuses``, if given)."""
    query = select(Run.status, func.count()).group_by(Run.status)
    query = _tenant_runs(query, tenant_id)
    if since is not None:
        query = query.where(Run.created_at >= since)
    if statuses is not None:
        query = query.where(Run.status.in_(list(statuses)))
    return {status: count for status, count in session.execute(query)}


USAGE_FIELDS = ("steps", "tool_calls", "llm_calls", "tokens_in", "tokens_out", "credits")
FINISHED_STEP = (StepStatus.SUCCEEDED, StepStatus.FAILED)


def sum_run_usage(session: Session, tenant_id: str, since: datetime) -> dict[str, float]:
    """The usage of the tenant's runs created at or after ``since``, summed field by field."""
    query = select(*[func.coalesce(func.sum(Run.usage[key].as_float()), 0.0) for key in USAGE_FIELDS]).where(
        Run.tenant_id == tenant_id, Run.created_at >= since
    )
    return dict(zip(USAGE_FIELDS, session.execute(query).one(), strict=True))


TIMESERIES = ("runs_started", "runs_succeeded", "runs_failed", "steps", "credits")


def timeseries(session: Session, tenant_id: str, metric: str, unit: str, since: datetime) -> dict[datetime, float]:
    """{bucket start: value} for one metric of the tenant, from ``since`` on; empty buckets are absent.

    runs_started counts runs by created_at; runs_succeeded and runs_failed count runs by completed_at;
    steps and credits sum the usage (finished steps, credits) of runs that ended, by completed_at.
    Every metric reads ``runs`` alone, through an index that starts with the tenant.
    """
    if metric == "runs_started":
        column, value, where = Run.created_at, func.count(), [Run.created_at >= since]
    elif metric in ("runs_succeeded", "runs_failed"):
        status = RunStatus.SUCCEEDED if metric == "runs_succeeded" else RunStatus.FAILED
        column, value, where = Run.completed_at, func.count(), [Run.status == status, Run.completed_at >= since]
    elif metric in ("credits", "steps"):
        terminal = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED]
        column = Run.completed_at
        value = func.coalesce(func.sum(Run.usage[metric].as_float()), 0.0)
        where = [Run.status.in_(terminal), Run.completed_at >= since]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    bucket = bucket_start(column, unit).label("bucket")
    query = select(bucket, value).where(Run.tenant_id == tenant_id, *where).group_by(bucket)
    return {start: float(v) for start, v in session.execute(query)}


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (``counts[i]`` = observations <= ``bounds[i]``), total count and sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    total: float


# Histograms of finished steps, by step type: "duration" is the latest attempt's run time (started ->
# completed) of steps that succeeded or failed; "latency" the time from queued (ready) to started of
# dispatched steps. A step is observed when it finishes (completed_at), once per completion.
STEP_SERIES = ("duration", "latency")
ROLLUP_WATERMARK = "steps"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _series(series: str):
    if series == "duration":
        return (seconds_between(Step.started_at, Step.completed_at),
                [Step.status.in_(FINISHED_STEP), Step.started_at.is_not(None)])
    if series == "latency":
        return (seconds_between(Step.queued_at, Step.started_at),
                [Step.type.in_(DISPATCHED_TYPES), Step.queued_at.is_not(None), Step.started_at.is_not(None)])
    raise ValueError(f"unknown series {series!r}")


def le_label(bound: float) -> str:
    return repr(float(bound))


def _window(series: str, bounds: Sequence[float], after, upto=None, tenant_id: str | None = None):
    """Per tenant, step type and bucket: count and sum of the series over steps finished after ``after``
    (and at or before ``upto``). The bucket is a CASE of inline literals, the same text in GROUP BY."""
    value, conditions = _series(series)
    bucket = case(*[(value <= literal_column(le_label(b)), literal_column(f"'{le_label(b)}'")) for b in bounds],
                  else_=literal_column("'+Inf'"))
    query = (
        select(Run.tenant_id.label("tenant_id"), Step.type.label("step_type"), bucket.label("le"),
               func.count().label("n"), func.coalesce(func.sum(value), 0.0).label("total"))
        .join(Run, Run.id == Step.run_id)
        .where(Step.completed_at > after, *conditions)
        .group_by(Run.tenant_id, Step.type, bucket)
    )
    if upto is not None:
        query = query.where(Step.completed_at <= upto)
    if tenant_id is not None:
        query = query.where(Run.tenant_id == tenant_id)
    return query


def advance_step_rollups(session: Session, bounds: dict[str, Sequence[float]], lag_s: float) -> datetime:
    """Fold the steps finished between the watermark and ``lag_s`` ago into ``metric_rollups``; returns
    the new watermark, whose row stays locked until the transaction ends (so the caller reads rollups
    and newer steps that agree: no other process can move the watermark meanwhile).

    The lag leaves room for transactions still committing steps finished just before it.
    """
    session.execute(_upsert(session, MetricWatermark).values(name=ROLLUP_WATERMARK, upto=EPOCH)
                    .on_conflict_do_nothing(index_elements=["name"]))
    after = session.execute(
        select(MetricWatermark.upto).where(MetricWatermark.name == ROLLUP_WATERMARK).with_for_update()
    ).scalar_one()
    upto = now(session) - timedelta(seconds=lag_s)
    if upto <= after:
        return after
    for series in STEP_SERIES:
        rows = [dict(series=series, tenant_id=r.tenant_id, step_type=r.step_type, le=r.le, count=r.n, total=r.total)
                for r in session.execute(_window(series, bounds[series], after, upto))]
        if rows:
            insert_ = _upsert(session, MetricRollup).values(rows)
            session.execute(insert_.on_conflict_do_update(
                index_elements=["tenant_id", "series", "step_type", "le"],
                set_={"count": MetricRollup.count + insert_.excluded.count,
                      "total": MetricRollup.total + insert_.excluded.total},
            ))
    session.execute(update(MetricWatermark).where(MetricWatermark.name == ROLLUP_WATERMARK).values(upto=upto))
    return upto


def step_histograms(session: Session, tenant_id: str | None, series: str, bounds: Sequence[float],
                    watermark: datetime) -> dict[str, Histogram]:
    """One series' histogram per step type: the rollups plus the steps finished after ``watermark``
    (what advance_step_rollups returned in this transaction)."""
    tail = _window(series, bounds, watermark, tenant_id=tenant_id)
    rolled = select(MetricRollup.tenant_id, MetricRollup.step_type, MetricRollup.le,
                    MetricRollup.count.label("n"), MetricRollup.total).where(MetricRollup.series == series)
    if tenant_id is not None:
        rolled = rolled.where(MetricRollup.tenant_id == tenant_id)
    both = union_all(rolled, tail).subquery()
    rows = session.execute(
        select(both.c.step_type, both.c.le, func.sum(both.c.n), func.sum(both.c.total))
        .group_by(both.c.step_type, both.c.le)
    ).all()
    per_type: dict[str, dict[str, tuple[int, float]]] = {}
    for step_type, le, n, total in rows:
        per_type.setdefault(step_type, {})[le] = (int(n), float(total))
    result = {}
    for step_type, buckets in per_type.items():
        running, cumulative = 0, []
        for bound in bounds:
            running += buckets.get(le_label(bound), (0, 0.0))[0]
            cumulative.append(running)
        count = sum(n for n, _ in buckets.values())
        result[step_type] = Histogram(tuple(bounds), tuple(cumulative), count, sum(t for _, t in buckets.values()))
    return result


def _upsert(session: Session, table):
    """INSERT … ON CONFLICT for this session's backend (PostgreSQL and SQLite both have it)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def count_step_errors(session: Session, tenant_id: str | None) -> dict[tuple[str, str, str], int]:
    """Attempts that failed, from the event log: {(event type, step type, error code): count} for
    ``step_retrying`` (retried) and ``step_failed`` (failed for good)."""
    code = Event.data[("error", "code")].as_string()
    query = (
        select(Event.type, Step.type, code, func.count())
        .join(Step, and_(Step.run_id == Event.run_id, Step.step_id == Event.step_id))
        .where(Event.type.in_(["step_retrying", "step_failed"]))
        .group_by(Event.type, Step.type, code)
    )
    query = _tenant_runs(query, tenant_id, join_from=Event.run_id)
    return {(kind, step_type, c or "unknown"): n for kind, step_type, c, n in session.execute(query)}


def step_queue_rates(session: Session, tenant_id: str, since: datetime) -> dict[str, dict[str, int]]:
    """Per queue, the tenant's steps queued and finished since ``since``: {queue: {"enqueued", "completed"}}
    (a step's latest attempt; ``ix_steps_queued`` and ``ix_steps_completed`` find them)."""
    result: dict[str, dict[str, int]] = {}
    for key, timestamp, extra in (("enqueued", Step.queued_at, Step.type.in_(DISPATCHED_TYPES)),
                                  ("completed", Step.completed_at, Step.status.in_(FINISHED_STEP))):
        query = (select(Step.queue, func.count()).join(Run, Run.id == Step.run_id)
                 .where(Run.tenant_id == tenant_id, timestamp >= since, extra).group_by(Step.queue))
        for queue, count in session.execute(query):
            result.setdefault(queue, {"enqueued": 0, "completed": 0})[key] = count
    return result


def live_step_queues(session: Session, tenant_id: str | None) -> set[str]:
    """The queues of dispatched steps in live runs (of one tenant, or of all when ``tenant_id`` is None)."""
    query = (select(Step.queue).distinct().join(Run, Run.id == Step.run_id)
             .where(Run.status.in_(list(LIVE_RUN)), Step.type.in_(DISPATCHED_TYPES)))
    if tenant_id is not None:
        query = query.where(Run.tenant_id == tenant_id)
    return set(session.execute(query).scalars())


def lease_heartbeats(session: Session) -> dict[str, datetime]:
    """{worker process ("host:pid"): its latest lease expiry} over running attempts (``ix_steps_lease``)."""
    query = (select(Step.worker, func.max(Step.lease_expires_at))
             .where(Step.lease_expires_at.is_not(None), Step.worker.is_not(None)).group_by(Step.worker))
    return {worker: expires for worker, expires in session.execute(query)}


def runs_of_tenant(session: Session, tenant_id: str, run_ids: Iterable[str]) -> set[str]:
    """Which of ``run_ids`` belong to the tenant."""
    run_ids = list(run_ids)
    if not run_ids:
        return set()
    return set(session.execute(select(Run.id).where(Run.id.in_(run_ids), Run.tenant_id == tenant_id)).scalars())
# --- webhooks -----------------------------------------------------------------------------------


def insert_webhook_secret(session: Session, tenant_id: str, workflow_id: str, salt: str) -> WebhookSecret:
    row = WebhookSecret(id=ids.new_id("whs"), tenant_id=tenant_id, workflow_id=workflow_id, salt=salt)
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def expire_webhook_secrets(session: Session, tenant_id: str, workflow_id: str, after_s: float) -> None:
    """Secrets of the workflow still valid now stop being valid ``after_s`` seconds from now (or
    sooner, if they were to stop sooner already)."""
    until = db_now(after_s)
    live = and_(WebhookSecret.tenant_id == tenant_id, WebhookSecret.workflow_id == workflow_id)
    session.execute(update(WebhookSecret).where(live, WebhookSecret.expires_at.is_(None))
                    .values(expires_at=until).execution_options(synchronize_session=False))
    session.execute(update(WebhookSecret).where(live, WebhookSecret.expires_at > until)
                    .values(expires_at=until).execution_options(synchronize_session=False))


def list_webhook_secrets(session: Session, tenant_id: str, workflow_id: str) -> Sequence[WebhookSecret]:
    return session.execute(
        select(WebhookSecret).where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.workflow_id == workflow_id)
        .order_by(WebhookSecret.created_at, WebhookSecret.id)
    ).scalars().all()


def live_webhook_secrets(session: Session, workflow_id: str) -> Sequence[WebhookSecret]:
    """Every tenant's unexpired secrets for a workflow id: the signature decides whose workflow it is."""
    return session.execute(
        select(WebhookSecret).where(
            WebhookSecret.workflow_id == workflow_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > db_now()),
        )
    ).scalars().all()


def record_webhook_delivery(session: Session, signature: str, secret_id: str, keep_s: float) -> bool:
    """Remember an accepted signature for ``keep_s`` seconds; False if it was seen already (a replay).

    Forgets the signatures past their time first, so the table stays the size of a few minutes' traffic.
    """
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.expires_at < db_now()))
    try:
        with session.begin_nested():
            session.execute(insert(WebhookDelivery).values(
                signature=signature, secret_id=secret_id, expires_at=db_now(keep_s)))
    except IntegrityError:
        return False
    return True
