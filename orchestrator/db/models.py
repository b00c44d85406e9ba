"""Tables. Every schema change is an Alembic revision; a test checks that the two agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from orchestrator.db.types import JsonType, UTCDateTime, db_now


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType, Any: JsonType}


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=db_now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()
    # The tenant's policy on tool calls (orchestrator/policy.py), over every workflow's own.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JsonType)


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Workflow(Base):
    __tablename__ = "workflows"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    latest_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()
    # DELETE /workflows/{id} archives (no new runs); publishing a version restores.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The latest version's retention_days (null: SWITCHYARD_RETENTION_DAYS), for the retention sweep.
    retention_days: Mapped[int | None] = mapped_column(Integer)


class WorkflowVersion(Base):
    """An immutable published definition; runs are pinned to one."""

    __tablename__ = "workflow_versions"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "workflow_id"], ["workflows.tenant_id", "workflows.id"]),
    )
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = _created()


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # GET /runs?status=… newest first, with keyset pagination on (created_at, id).
        Index("ix_runs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        Index("ix_runs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_runs_tenant_workflow_created", "tenant_id", "workflow_id", "created_at", "id"),
        # Analytics: runs created since (by status, per bucket) read this index alone; runs that
        # ended in a status since a time (per bucket) read the next one.
        Index("ix_runs_tenant_created_status", "tenant_id", "created_at", "status"),
        Index("ix_runs_tenant_status_completed", "tenant_id", "status", "completed_at"),
        # The scheduler's queue of runs with something to do; partial, so it stays tiny.
        Index("ix_runs_has_work", "has_work", postgresql_where=text("has_work"), sqlite_where=text("has_work")),
        # A run's children (sub-runs).
        # Flow control: the runs of a workflow that hold or wait for a concurrency key (orchestrator/admission.py).
        Index("ix_runs_concurrency", "tenant_id", "workflow_id", postgresql_where=text("concurrency_keys IS NOT NULL"),
              sqlite_where=text("concurrency_keys IS NOT NULL")),
        Index("ix_runs_parent", "parent_run_id", postgresql_where=text("parent_run_id IS NOT NULL"),
              sqlite_where=text("parent_run_id IS NOT NULL")),
        Index("uq_runs_idempotency", "tenant_id", "idempotency_key", unique=True),
        ForeignKeyConstraint(
            ["tenant_id", "workflow_id", "workflow_version"],
            ["workflow_versions.tenant_id", "workflow_versions.workflow_id", "workflow_versions.version"],
        ),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    workflow_id: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    waiting_on: Mapped[str | None] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(JsonType)
    output: Mapped[Any | None] = mapped_column(JsonType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    usage: Mapped[dict[str, Any]] = mapped_column(JsonType)
    trigger_type: Mapped[str] = mapped_column(String(16))
    triggered_by: Mapped[str | None] = mapped_column(String(200))
    retry_of: Mapped[str | None] = mapped_column(String(40))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    has_work: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The highest risk level of the tool calls made or pending so far (low, medium, high).
    risk_level: Mapped[str | None] = mapped_column(String(8))
    # An operator's raised limits (POST /runs/{id}/resume), over the definition's policy limits.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # A fork (POST /runs/{id}/fork): the run and step it was forked from.
    # A child run (a `workflow` step's sub-run): its parent run and step, and how deep it is (top level 0).
    parent_run_id: Mapped[str | None] = mapped_column(String(40))
    parent_step_id: Mapped[str | None] = mapped_column(String(80))
    depth: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    forked_from_run_id: Mapped[str | None] = mapped_column(String(40))
    forked_from_step_id: Mapped[str | None] = mapped_column(String(64))
    # 1 (highest) to 9: its ready steps are admitted to their queue's window before lower ones'.
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default="5")
    # The workflow-level concurrency keys it holds or waits for, rendered at its first pass
    # ("<index>:<key>", one per entry of the definition's `concurrency`); null without any.
    concurrency_keys: Mapped[list[str] | None] = mapped_column(JsonType)


# A step that holds a place in its queue's window (see Step.held).
_IN_WINDOW = "status IN ('queued', 'running') AND NOT held"


class Step(Base):
    """One row per step of a run; ``attempt`` counts the attempts dispatched so far."""

    __tablename__ = "steps"
    __table_args__ = (
        Index("ix_steps_due", "due_at", postgresql_where=text("due_at IS NOT NULL"), sqlite_where=text("due_at IS NOT NULL")),
        Index(
            "ix_steps_correlation",
            "correlation_key",
            postgresql_where=text("correlation_key IS NOT NULL"),
            sqlite_where=text("correlation_key IS NOT NULL"),
        ),
        # Analytics and GET /queues: steps queued, and steps finished, since a time.
        Index(
            "ix_steps_queued",
            "queued_at",
            postgresql_where=text("queued_at IS NOT NULL"),
            sqlite_where=text("queued_at IS NOT NULL"),
        ),
        Index(
            "ix_steps_completed",
            "completed_at",
            postgresql_where=text("completed_at IS NOT NULL"),
            sqlite_where=text("completed_at IS NOT NULL"),
        ),
        # A for-each step's items in index order (core.items): the next to dispatch, and GET …/items.
        Index("ix_steps_items", "run_id", "item_of", "item_index", postgresql_where=text("item_of IS NOT NULL"),
              sqlite_where=text("item_of IS NOT NULL")),
        # Flow control: the steps that hold a place in their queue's window (queued and admitted, or
        # running), counted at each admission; and the attempts holding a step-level concurrency key.
        Index("ix_steps_window", "queue", postgresql_where=text(_IN_WINDOW), sqlite_where=text(_IN_WINDOW)),
        Index("ix_steps_concurrency", "concurrency_key", postgresql_where=text("concurrency_key IS NOT NULL"),
              sqlite_where=text("concurrency_key IS NOT NULL")),
        Index(
            "ix_steps_lease",
            "lease_expires_at",
            postgresql_where=text("lease_expires_at IS NOT NULL"),
            sqlite_where=text("lease_expires_at IS NOT NULL"),
        ),
    )
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    # A for-each item's row is named "<step>[<index>]" (see orchestrator/core/items.py).
    step_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(100))
    output: Mapped[Any | None] = mapped_column(JsonType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    skipped_reason: Mapped[str | None] = mapped_column(String(32))
    usage: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where an agent suspended (waiting on a human), so the next dispatch continues from there.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # A wait_event step's rendered key; POST /events finds waiting steps by it.
    correlation_key: Mapped[str | None] = mapped_column(String(200))
    # A retry's backoff, a timer, an event wait's timeout: the scheduler acts when due_at passes.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What a waiting agent or tool step waits on (question, approval, budget); parked steps leave it null.
    waiting_on: Mapped[str | None] = mapped_column(String(16))
    # Every policy decision taken about this step's tool calls, in order, across its attempts.
    policy: Mapped[list[Any] | None] = mapped_column(JsonType)
    # A for-each item's step, index and value (null on a step of the definition), and on a for-each
    # step its items' counts: {"total", "pending", "in_flight", "succeeded", "failed", "cancelled"}.
    item_of: Mapped[str | None] = mapped_column(String(64))
    item_index: Mapped[int | None] = mapped_column(Integer)
    item_value: Mapped[Any | None] = mapped_column(JsonType)
    item_counts: Mapped[dict[str, int] | None] = mapped_column(JsonType)
    # A fork's step that kept the original run's output instead of running (no usage charged).
    reused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Queued in the database but not admitted to its queue's window yet: no broker message (its outbox
    # row is held too), and it does not count against the window (orchestrator/admission.py).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # A step-level concurrency key, rendered ("<tenant>:<key>"), while the step waits for or holds it.
    concurrency_key: Mapped[str | None] = mapped_column(String(300))


class Event(Base):
    """The append-only log of a run; ``seq`` is dense per run and written with the change it records."""

    __tablename__ = "events"
    __table_args__ = (
        # Metrics: retries and failures by code, without reading the whole log.
        Index(
            "ix_events_step_errors",
            "type",
            postgresql_where=text("type IN ('step_retrying', 'step_failed')"),
            sqlite_where=text("type IN ('step_retrying', 'step_failed')"),
        ),
    )
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    step_id: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = _created()


class Outbox(Base):
    """A Celery message committed with the state change that calls for it, deleted once published."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_backlog", "queue", "tenant_id", "priority", "id",
                            postgresql_where=text("held"), sqlite_where=text("held")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40))
    step_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(100))
    soft_time_limit: Mapped[float] = mapped_column()
    created_at: Mapped[datetime] = _created()
    # A held message waits in the database for room in its queue's window; the scheduler admits held
    # messages fairly across tenants (by ``tenant_id``), then by ``priority`` and age (``id``).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[int | None] = mapped_column(SmallInteger)



class Approval(Base):
    """One round of an approval step: pending until a person approves, rejects or asks for changes."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_tenant_status", "tenant_id", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step_id: Mapped[str] = mapped_column(String(64))
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str | None] = mapped_column(String(2000))
    comment: Mapped[str | None] = mapped_column(String(10000))
    decided_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A tool call a policy sent for approval ({"tool", "args", "rule", "rationale"}); null for approval steps.
    call: Mapped[dict[str, Any] | None] = mapped_column(JsonType)


class Question(Base):
    """A question to a person, from a `question` step or an agent's `human.ask` call."""

    __tablename__ = "questions"
    __table_args__ = (Index("ix_questions_tenant_status", "tenant_id", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step_id: Mapped[str] = mapped_column(String(64))
    question: Mapped[str] = mapped_column(String(10000))
    status: Mapped[str] = mapped_column(String(20))
    answer: Mapped[Any | None] = mapped_column(JsonType)
    answered_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class InboundEvent(Base):
    """An event from POST /events, kept for a while so a step that starts waiting later still gets it."""

    __tablename__ = "inbound_events"
    __table_args__ = (Index("ix_inbound_events_key", "tenant_id", "correlation_key", "expires_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    correlation_key: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[Any | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookSecret(Base):
    """A signing secret of a workflow's webhook (``POST /hooks/{workflow_id}``).

    The secret itself is never stored: it is derived from SWITCHYARD_SECRET_KEY, the id and the salt
    (orchestrator/webhooks.py), so a copy of the database does not reveal it. A rotated secret keeps
    working until ``expires_at``; a current one has none.
    """

    __tablename__ = "webhook_secrets"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "workflow_id"], ["workflows.tenant_id", "workflows.id"]),
        Index("ix_webhook_secrets_workflow", "workflow_id", "tenant_id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    workflow_id: Mapped[str] = mapped_column(String(100))
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """A signature already accepted, kept until its timestamp is past the tolerance: a replay of it
    collides with this row and is refused."""

    __tablename__ = "webhook_deliveries"
    signature: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_id: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class MetricRollup(Base):
    """Histogram buckets of finished steps up to the watermark, so a scrape of GET /metrics reads
    these rows and the steps since the watermark instead of every step ever run."""

    __tablename__ = "metric_rollups"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    series: Mapped[str] = mapped_column(String(32), primary_key=True)
    step_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    # The bucket's upper bound as Prometheus writes it ("0.5", "+Inf"); counts are per bucket, not cumulative.
    le: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[float] = mapped_column(Float, default=0.0)


class MetricWatermark(Base):
    """How far (by steps.completed_at) the rollups reach."""

    __tablename__ = "metric_watermarks"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    upto: Mapped[datetime] = mapped_column(UTCDateTime())


# Triggers and the lifecycle of old data (orchestrator/schedules.py, triggers.py, retention.py).

class Schedule(Base):
    """A cron schedule of a workflow. ``last_slot`` is the last slot considered (fired or passed
    over); ``next_fire_at`` the next slot, null while disabled, so the schedulers find due ones by index."""

    __tablename__ = "schedules"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "workflow_id"], ["workflows.tenant_id", "workflows.id"]),
        Index("ix_schedules_next_fire", "next_fire_at", postgresql_where=text("next_fire_at IS NOT NULL"),
              sqlite_where=text("next_fire_at IS NOT NULL")),
    )
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    input: Mapped[Any] = mapped_column(JsonType)
    overlap: Mapped[str] = mapped_column(String(16))
    catchup: Mapped[str] = mapped_column(String(8))
    enabled: Mapped[bool] = mapped_column(Boolean)
    last_slot: Mapped[datetime] = mapped_column(UTCDateTime())
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class ScheduleFire(Base):
    """One slot of a schedule, fired once: its key is inserted in the transaction that starts the run
    (or records the slot skipped), so a second scheduler, or a restarted one, cannot fire it again."""

    __tablename__ = "schedule_fires"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    slot: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))  # started | skipped | failed
    run_id: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = _created()


class WorkflowTrigger(Base):
    """An event name the latest version of a workflow starts on (its definition's ``triggers``),
    so POST /events finds the workflows to start by index instead of reading every definition."""

    __tablename__ = "workflow_triggers"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(200), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(100), primary_key=True)


class EventReceipt(Base):
    """An event id POST /events has seen: the same id again starts nothing."""

    __tablename__ = "event_receipts"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_now(), nullable=False, index=True)


class PurgedRows(Base):
    """Rows the retention sweep deleted, per tenant and table (the metric
    switchyard_retention_purged_rows_total)."""

    __tablename__ = "purged_rows"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
