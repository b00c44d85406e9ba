"""People and the outside world: step checkpoints, approvals, questions and inbound events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from orchestrator import ids
from orchestrator.db.models import Approval, InboundEvent, Question, Run, Step
from orchestrator.db.types import db_now
from orchestrator.states import StepStatus

# The tables the guarded writes below change, as Core objects (the ORM entities are for reading rows
# the API serialises).
_APPROVALS, _QUESTIONS, _INBOUND_EVENTS = Approval.__table__, Question.__table__, InboundEvent.__table__


def step_checkpoint(session: Session, run_id: str, step_id: str) -> dict | None:
    return session.execute(
        select(Step.checkpoint).where(Step.run_id == run_id, Step.step_id == step_id)
    ).scalar_one_or_none()


def insert_approval(session: Session, *, approval_id: str, tenant_id: str, run_id: str, step_id: str,
                    prompt: str | None, call: dict | None = None) -> None:
    """A new pending round for an approval step, or for a tool ``call`` a policy gated; rounds count from 1."""
    rounds = session.execute(
        select(func.count()).select_from(Approval).where(Approval.run_id == run_id, Approval.step_id == step_id)
    ).scalar_one()
    # Cut to the column's size: a rendered prompt can be any length, and a failed insert would
    # leave the run stuck in the scheduler.
    session.add(Approval(id=approval_id, tenant_id=tenant_id, run_id=run_id, step_id=step_id,
                         round=rounds + 1, status="pending", prompt=prompt[:2000] if prompt else prompt,
                         # SQL NULL, not JSON null, for approval steps: templates look for call IS NULL.
                         **({"call": call} if call is not None else {})))
    session.flush()


def get_approval(session: Session, run_id: str, approval_id: str) -> Approval | None:
    return session.execute(
        select(Approval).where(Approval.id == approval_id, Approval.run_id == run_id)
        .with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()


def decide_approval(session: Session, approval_id: str, status: str, comment: str | None, decided_by: str) -> bool:
    """pending -> a decision; False if it was already decided."""
    return session.execute(
        update(_APPROVALS).where(_APPROVALS.c.id == approval_id, _APPROVALS.c.status == "pending")
        .values(status=status, comment=comment, decided_by=decided_by, decided_at=db_now())
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


def list_approvals(session: Session, tenant_id: str, statuses: Sequence[str] | None, limit: int
                   ) -> Sequence[Approval]:
    """The tenant's newest first, of ``statuses`` (None: every status)."""
    query = select(Approval).where(Approval.tenant_id == tenant_id)
    if statuses:
        query = query.where(Approval.status.in_(list(statuses)))
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


def insert_question(session: Session, *, question_id: str, tenant_id: str, run_id: str, step_id: str,
                    question: str) -> None:
    """An open question for a step, shown in the inbox."""
    session.add(Question(id=question_id, tenant_id=tenant_id, run_id=run_id, step_id=step_id,
                         question=question[:10000], status="open"))
    session.flush()


def get_question(session: Session, run_id: str, question_id: str) -> Question | None:
    return session.execute(
        select(Question).where(Question.id == question_id, Question.run_id == run_id)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def answer_question(session: Session, question_id: str, answer: Any, answered_by: str) -> bool:
    return session.execute(
        update(_QUESTIONS).where(_QUESTIONS.c.id == question_id, _QUESTIONS.c.status == "open")
        .values(status="answered", answer=answer, answered_by=answered_by, answered_at=db_now())
    ).rowcount == 1


def list_questions(session: Session, tenant_id: str, statuses: Sequence[str] | None, limit: int
                   ) -> Sequence[Question]:
    """The tenant's newest first, of ``statuses`` (None: every status)."""
    query = select(Question).where(Question.tenant_id == tenant_id)
    if statuses:
        query = query.where(Question.status.in_(list(statuses)))
    return session.execute(query.order_by(Question.created_at.desc()).limit(limit)).scalars().all()


def close_open_requests(session: Session, run_id: str) -> None:
    """The run stopped: its pending approvals and open questions are cancelled."""
    session.execute(update(_APPROVALS).where(_APPROVALS.c.run_id == run_id, _APPROVALS.c.status == "pending")
                    .values(status="cancelled", decided_at=db_now()))
    session.execute(update(_QUESTIONS).where(_QUESTIONS.c.run_id == run_id, _QUESTIONS.c.status == "open")
                    .values(status="cancelled", answered_at=db_now()))


def insert_inbound_event(session: Session, tenant_id: str, key: str, *, name: str | None, payload: Any,
                         keep_s: float) -> str:
    """Keep an inbound event with this correlation key for ``keep_s`` seconds; its new id."""
    event_id = ids.new_id("evt")
    session.execute(insert(_INBOUND_EVENTS).values(
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
