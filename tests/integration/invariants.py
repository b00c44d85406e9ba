"""What the tests check after a fault-injection scenario.

- ``assert_no_violations``: the invariant checker (``orchestrator.doctor``): every run, step and outbox
  row is as the engine promises, once the scheduler had a few sweeps to heal what the scenario left (a
  lease that just expired, an outbox row a killed process left).
- ``assert_every_step_succeeded_once``: every run succeeded, and each of its steps (a for-each step's
  items, a child run's steps included) was recorded as completed exactly once, and no attempt was
  dispatched twice: nothing lost, nothing doubled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from sqlalchemy import and_, func, select

from orchestrator.db.models import Event, Outbox, Run, Step
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.doctor import find_violations, report
from orchestrator.settings import Settings


def assert_no_violations(settings: Settings, run_ids: Sequence[str] | None = None, within_s: float | None = None
                         ) -> None:
    """Fail, listing them, if violations remain after ``within_s`` seconds (default: a lease, the
    republish delay and three sweeps, the longest a healthy engine takes to heal one); of the runs
    ``run_ids`` only, if given (a database other tests share)."""
    within_s = within_s if within_s is not None else (
        settings.lease_s + settings.outbox_republish_after_s + 3 * settings.sweep_interval_s)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    deadline = time.monotonic() + within_s
    try:
        while True:
            with sessions() as session:
                violations = find_violations(session, settings, run_ids=run_ids)
            if not violations or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polling with a deadline: violations heal as the scheduler sweeps
    finally:
        engine.dispose()
    if violations:
        pytest.fail(f"invariants violated {within_s:.0f} s after the scenario:\n{report(violations)}", pytrace=False)


def wait_all_runs_ended(settings: Settings, timeout_s: float) -> float:
    """Poll until no run (child runs included) is live; seconds it took. Fails, with the statuses, after
    ``timeout_s``."""
    engine = make_engine(settings)
    sessions, began = make_sessionmaker(engine), time.monotonic()
    try:
        while True:
            with sessions() as session:
                statuses = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
            if not set(statuses) - {"succeeded", "failed", "cancelled"}:
                return time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                with sessions() as session:
                    stuck = _what_live_runs_hold(session, settings)
                pytest.fail(f"runs still live {timeout_s:.0f} s after the last fault: {statuses}\n{stuck}",
                            pytrace=False)
            time.sleep(0.5)  # polling with a deadline
    finally:
        engine.dispose()


def _what_live_runs_hold(session, settings: Settings) -> str:
    """For a failure's message: the live runs' steps by status, runs flagged with work, one such run's
    steps, and what the invariant checker says."""
    live = Run.status.in_(["queued", "running", "waiting", "paused"])
    steps = dict(session.execute(select(Step.status, func.count()).join(Run, Run.id == Step.run_id).where(live)
                                 .group_by(Step.status)).all())
    flagged = session.execute(select(func.count()).select_from(Run).where(live, Run.has_work.is_(True))).scalar_one()
    one = session.execute(select(Run.id).where(live).limit(1)).scalar_one_or_none()
    its_steps = session.execute(select(Step.step_id, Step.status, Step.attempt, Step.lease_expires_at, Step.due_at)
                                .where(Step.run_id == one)).all() if one else []
    held = dict(session.execute(select(Step.status, func.count()).join(Run, Run.id == Step.run_id)
                                .where(live, Step.held.is_(True)).group_by(Step.status)).all())
    outbox = dict(session.execute(select(Outbox.held, func.count()).group_by(Outbox.held)).all())
    return (f"their steps by status: {steps} (held: {held}); outbox rows by held: {outbox}; "
            f"runs flagged with work: {flagged}; run {one}: {its_steps}\n"
            f"{report(find_violations(session, settings, limit=10))}")


def assert_every_step_succeeded_once(settings: Settings) -> dict[str, int]:
    """Fail unless every run of the database succeeded, each step row (items included) has exactly one
    ``step_completed`` event, no event completes a step that has no row, and no attempt was queued
    twice. Returns figures: runs (top-level), child runs, steps, attempts queued, retries, and of those
    the attempts lost with their worker (lease expired)."""
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            statuses = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
            completed = (select(Event.run_id, Event.step_id, func.count().label("times"))
                         .where(Event.type == "step_completed").group_by(Event.run_id, Event.step_id).subquery())
            not_once = session.execute(
                select(Step.run_id, Step.step_id, func.coalesce(completed.c.times, 0))
                .outerjoin(completed, and_(completed.c.run_id == Step.run_id, completed.c.step_id == Step.step_id))
                .where(func.coalesce(completed.c.times, 0) != 1).limit(10)).all()
            strays = session.execute(
                select(completed.c.run_id, completed.c.step_id)
                .outerjoin(Step, and_(Step.run_id == completed.c.run_id, Step.step_id == completed.c.step_id))
                .where(Step.run_id.is_(None)).limit(10)).all()
            queued_twice = session.execute(
                select(Event.run_id, Event.step_id, Event.attempt).where(Event.type == "step_queued")
                .group_by(Event.run_id, Event.step_id, Event.attempt).having(func.count() > 1).limit(10)).all()
            figures = dict(
                runs=session.execute(select(func.count()).where(Run.parent_run_id.is_(None))).scalar_one(),
                child_runs=session.execute(select(func.count()).where(Run.parent_run_id.is_not(None))).scalar_one(),
                steps=session.execute(select(func.count()).select_from(Step)).scalar_one(),
                attempts=session.execute(
                    select(func.count()).select_from(Event).where(Event.type == "step_queued")).scalar_one(),
            )
            errors = session.execute(select(Event.data).where(Event.type == "step_retrying")).scalars().all()
            figures["retries"] = len(errors)
            # Attempts whose lease expired (their worker died): the sweep reclaimed them and retried.
            figures["lost"] = sum(1 for data in errors if (data.get("error") or {}).get("code") == "worker_lost")
    finally:
        engine.dispose()
    assert set(statuses) == {"succeeded"}, f"runs not all succeeded: {statuses}"
    assert not_once == [], f"steps not completed exactly once (run, step, times): {not_once}"
    assert strays == [], f"completions of steps that have no row: {strays}"
    assert queued_twice == [], f"attempts queued twice (run, step, attempt): {queued_twice}"
    return figures
