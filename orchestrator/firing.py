"""Schedules at the edge: the scheduler processes fire their due slots (orchestrator/schedules.py decides).

Each slot is fired once however many schedulers run: a scheduler locks the due schedules it takes
(``FOR UPDATE SKIP LOCKED``: two never take the same one), and the slot's key (schedule, slot) is
inserted into ``schedule_fires`` in the transaction that starts its run, so a slot fired before a
crash or a restart collides with its own row and is not fired again. The run starts through
``service.start_run`` with ``trigger_type="schedule"``; the scheduler's next pass advances it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import controls, schedules, service
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core.inputs import Actor
from orchestrator.db import repository as repo
from orchestrator.db.models import Schedule
from orchestrator.db.session import transaction
from orchestrator.errors import SwitchyardError
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# Schedules fired per transaction; a full batch makes the scheduler come back at once for more.
BATCH = 50
# How soon to look again at a due schedule another scheduler holds.
HELD_RETRY_S = 0.1
LIVE = frozenset(s.value for s in repo.LIVE_RUN)


@dataclass
class Fired:
    """What one round fired: runs started, tasks of cancelled runs to revoke, the next slot ahead, and
    whether the batch was full (more may be due)."""

    started: list[str] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    next_fire_at: datetime | None = None
    full: bool = False


def fire_due(session: Session, settings: Settings, catalog: DefinitionCatalog, now: datetime) -> Fired:
    """Fire the slots due at ``now`` of the schedules due then, in the caller's transaction."""
    out = Fired()
    due = repo.lock_due_schedules(session, now, BATCH)
    for schedule in due:
        spec = schedules.Spec(schedule.cron, schedule.timezone, schedule.overlap, schedule.catchup)
        decided = schedules.plan(spec, schedule.last_slot, now, max_catchup=settings.max_catchup)
        last_run = schedule.last_run_id
        for slot in decided.fire:
            last_run = _fire_slot(session, settings, catalog, schedule, slot=slot, previous=last_run, out=out)
        if decided.passed_over or decided.more_passed_over:
            log.info("schedule %s/%s passed over %d%s missed slots (catchup %s)", schedule.workflow_id,
                     schedule.id, decided.passed_over, " or more" if decided.more_passed_over else "",
                     schedule.catchup)
        repo.advance_schedule(session, schedule, last_slot=decided.last_slot, next_fire_at=decided.next_fire_at,
                              last_run_id=last_run)
    out.next_fire_at, out.full = repo.next_fire_at(session), len(due) == BATCH
    return out


def _fire_slot(session: Session, settings: Settings, catalog: DefinitionCatalog, schedule: Schedule, *,
               slot: datetime, previous: str | None, out: Fired) -> str | None:
    """Fire one slot: skip it, or start a run (cancelling the ``previous`` run the schedule started first,
    with cancel_previous). The last run the schedule started after this slot."""
    live = previous is not None and repo.run_status(session, previous) in LIVE
    action = schedules.overlap_action(schedule.overlap, live)
    if action == "skip":
        repo.insert_fire(session, schedule, slot, "skipped", detail=f"run {previous} is still live")
        return previous
    if not repo.insert_fire(session, schedule, slot, "started"):
        return previous  # fired already
    if action == "cancel_previous":
        out.revoke += _cancel(session, settings, catalog, schedule, previous)
    try:
        with session.begin_nested():
            run = service.start_run(session, settings, schedule.tenant_id, schedule.workflow_id, schedule.input,
                                    trigger_type="schedule", triggered_by=schedule.id).run
    except SwitchyardError as exc:
        log.warning("schedule %s/%s could not start a run for %s: %s", schedule.workflow_id, schedule.id, slot, exc)
        repo.mark_fire_failed(session, schedule, slot, f"{exc.code}: {exc}"[:2000])
        return previous
    repo.set_fire_run(session, schedule, slot, run.id)
    out.started.append(run.id)
    return run.id


def _cancel(session: Session, settings: Settings, catalog: DefinitionCatalog, schedule: Schedule,
            run_id: str) -> list[str]:
    """Cancel the schedule's previous run (overlap cancel_previous); the tasks to revoke after the commit."""
    request = controls.ControlRequest(schedule.tenant_id, run_id, "cancel", Actor("scheduler", f"schedule:{schedule.id}"),
                                      {"reason": f"schedule {schedule.id}: a new slot came (overlap cancel_previous)"})
    try:
        with session.begin_nested():
            return controls.control(session, catalog, request, settings=settings).revoke
    except SwitchyardError as exc:  # it ended meanwhile: nothing to cancel
        log.info("schedule %s: previous run %s not cancelled: %s", schedule.id, run_id, exc)
        return []


class Ticker:
    """The scheduler loop's clock for schedules: fires due slots when the earliest next slot comes.

    ``clock`` returns the time slots are compared with (default: the database's clock); tests inject
    one to drive schedules without waiting.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], catalog: DefinitionCatalog,
                 clock: Callable[[], datetime] | None = None):
        self.settings, self.sessions, self.catalog, self.clock = settings, sessions, catalog, clock
        self.due_at: float | None = 0.0  # time.monotonic() of the next slot; 0: look at once

    def seconds_until_due(self) -> float:
        """Until the next slot (infinity if no schedule is enabled)."""
        return float("inf") if self.due_at is None else max(0.0, self.due_at - time.monotonic())

    def tick(self, force: bool = False) -> list[str]:
        """Fire what is due (and read when the next slot comes) if a slot has come, or with ``force``
        (the sweep: a schedule changed through the API). Returns the tasks to revoke."""
        if not force and (self.due_at is None or time.monotonic() < self.due_at):
            return []
        with transaction(self.sessions) as session:
            now = self.clock() if self.clock else repo.now(session)
            fired = fire_due(session, self.settings, self.catalog, now)
        if fired.started:
            log.info("schedules started %d runs", len(fired.started))
        if fired.full:
            self.due_at = time.monotonic()
        elif fired.next_fire_at is None:
            self.due_at = None
        else:
            # A slot already due here is another scheduler's to fire (it holds the schedule's lock):
            # look again shortly rather than at once, which would spin until that one commits.
            self.due_at = time.monotonic() + max((fired.next_fire_at - now).total_seconds(), HELD_RETRY_S)
        return fired.revoke

